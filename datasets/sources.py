"""Where training and evaluation batches come from.

Training draws global batches from one permutation per epoch that depends only on the
seed and the epoch, so a run resumed at step s (with any number of processes) sees the
batches it would have seen. Each process takes its slice of every global batch.

Two sources give the same augmentation distribution:
- `InMemoryBatches`: the whole split decoded once to uint8 and kept on the device
  (CIFAR: 50k x 3 x 32 x 32 = 150 MB); crop, flip and resize run on whole batches there.
- `LoaderBatches`: DataLoader workers decode and augment each image (data too large
  to keep in memory).
"""
import copy
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from datasets.batch_augment import (FLIP_MODES, alternating_flips, draw_crops, first_epoch_flips, test_resize,
                                    train_augment)
from datasets.folder import ImageFolderDataset
from datasets.transforms import TrainJointTransform, default_train_size, normalize
from utils.base.runtime import mixed_seed

# The epoch permutations mix seed and epoch with their own multiplier, older than mixed_seed's default:
# another value would reorder the batches of existing runs, and resuming one would repeat or skip images.
EPOCH_SEED_STRIDE = 100_003


class GlobalBatchIndices:
    """Indices of this rank's part of every global batch, from `start_step` on, forever."""

    def __init__(self, num_items, global_batch, rank=0, world_size=1, seed=0, start_step=0):
        if global_batch % world_size:
            raise ValueError(f"--batch {global_batch} must be divisible by the number of processes {world_size}")
        if num_items < global_batch:
            raise ValueError(f"the training set has {num_items} images, fewer than one batch (--batch {global_batch})")
        self.num_items, self.global_batch = num_items, global_batch
        self.local_batch = global_batch // world_size
        self.rank, self.seed, self.start_step = rank, seed, start_step
        self.batches_per_epoch = num_items // global_batch  # the incomplete last batch is dropped

    def permutation(self, epoch):
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, epoch, EPOCH_SEED_STRIDE))
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self):
        step = self.start_step
        while True:
            epoch, position = divmod(step, self.batches_per_epoch)
            permutation = self.permutation(epoch)
            for batch in range(position, self.batches_per_epoch):
                start = batch * self.global_batch + self.rank * self.local_batch
                yield permutation[start:start + self.local_batch]
            step = (epoch + 1) * self.batches_per_epoch


def step_generator(seed, step, device):
    """Randomness of one global batch, from (seed, step) only: a resumed run repeats it, and any
    number of processes draw the same numbers (each then takes its own slice)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(mixed_seed(seed, step))
    return generator


class InMemoryBatches:
    """Yields (images float [b,3,r,r], labels [b], masks uint8 [b,r,r] or None) on `device`.
    flip: 'random' (each draw mirrors with p = 0.5) or 'alternate' (`alternating_flips` per epoch);
    pad: reach train_size by reflection padding instead of a resize (`train_augment`)."""

    def __init__(self, decoded, indices, resolution, device, seed=0, train_size=None, scale_range=None,
                 flip="random", pad=False):
        if flip not in FLIP_MODES:
            raise ValueError(f"flip {flip!r}: expected one of {', '.join(FLIP_MODES)}")
        self.scale_range, self.pad = scale_range, pad
        self.first_flips = first_epoch_flips(indices.num_items, seed) if flip == "alternate" else None
        self.images = decoded["images"].to(device)
        self.labels = decoded["labels"].to(device)
        self.masks = decoded["masks"].to(device) if "masks" in decoded else None
        self.indices, self.resolution, self.device, self.seed = indices, resolution, device, seed
        self.train_size = train_size or default_train_size(resolution)

    def __iter__(self):
        for step, index in enumerate(self.indices, start=self.indices.start_step):
            index = index.to(self.device)
            masks = self.masks[index] if self.masks is not None else None
            generator = step_generator(self.seed, step, self.device)
            crops = draw_crops(self.indices.global_batch, self.train_size, self.resolution, self.device, generator,
                               self.scale_range)
            mine = slice(self.indices.rank * len(index), (self.indices.rank + 1) * len(index))
            crops = [c[mine] for c in crops]
            if self.first_flips is not None:  # the flips are the last entry of either kind of crop
                crops[-1] = alternating_flips(self.first_flips, index, step // self.indices.batches_per_epoch)
            images, masks = train_augment(self.images[index], masks, self.resolution, self.train_size,
                                          crops=crops, scale_range=self.scale_range, pad=self.pad)
            yield images, self.labels[index], masks


class _Augmented(Dataset):
    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        image, mask = self.transform(item["image"], item.get("mask"))
        out = {"image": image, "label": item["label"]}
        if mask is not None:
            out["mask"] = mask
        return out


class LoaderBatches:
    """Same interface as InMemoryBatches; workers decode and augment every image."""

    def __init__(self, dataset, indices, resolution, device, workers=4, train_size=None, scale_range=None):
        self.loader = DataLoader(_Augmented(dataset, TrainJointTransform(resolution, train_size, scale_range)),
                                 batch_sampler=indices, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        self.device = device

    def __iter__(self):
        for batch in self.loader:
            images = normalize(batch["image"].to(self.device, non_blocking=True))
            masks = batch["mask"].to(self.device, non_blocking=True) if "mask" in batch else None
            yield images, batch["label"].to(self.device), masks


def decode_size_for(dataset, fallback_size):
    """Keep native pixels when every image has the same size (CIFAR); otherwise decode at
    `fallback_size` so the set can be stacked."""
    try:
        dataset.native_size()
        return None
    except ValueError:
        return fallback_size


def relative_paths(dataset):
    """Every image's path relative to the split root, in dataset order ("cat/0007.jpg"): how a
    checkpoint's holdout_samples and fusion_selection.json name images."""
    return [Path(path).relative_to(dataset.root).as_posix() for path, _ in dataset.samples]


def restrict(dataset, indices):
    """The same split limited to `indices` (positions renumbered 0..len-1), e.g. without held-out images."""
    subset = copy.copy(dataset)
    subset.samples = [dataset.samples[i] for i in indices]
    return subset


def decoded_size(dataset):
    """(height, width) of the uint8 images the dataset yields."""
    if dataset.image_size is not None:
        return (dataset.image_size, dataset.image_size)
    return tuple(dataset.native_size())


def eval_batches(dataset, resolution, device, batch_size, workers=2, indices=None):
    """Test-time batches in dataset order: (images float [b,3,r,r], labels [b])."""
    subset = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        yield test_resize(images, resolution), batch["label"].to(device), batch


def open_split(root, resolution, with_masks=False, mask_root=None, num_classes=None, classes=None,
               train_size=None, skip_corrupt=False):
    """The ImageFolder of a split, decoding at native size where possible (else at the training
    resize `train_size` when given, else at `resolution`)."""
    dataset = ImageFolderDataset(root, with_masks=with_masks, mask_root=mask_root, num_classes=num_classes,
                                 classes=classes, skip_corrupt=skip_corrupt)
    size = decode_size_for(dataset, train_size or resolution)
    if size is not None:
        dataset = dataset.resized(size)
    if with_masks:
        _check_mask_shape(dataset)
    return dataset


def _check_mask_shape(dataset):
    """Images and masks are resized to one square, so they must have the same aspect ratio."""
    image_height, image_width = decoded_size(dataset)
    mask_height, mask_width = dataset.mask_size
    if mask_height * image_width != mask_width * image_height:
        raise ValueError(f"masks under {dataset.mask_root} are {mask_width}x{mask_height} (WxH) but the images of "
                         f"{dataset.root} are decoded at {image_width}x{image_height}: a mask must cover its image "
                         f"with the same aspect ratio (make_cam.py writes square masks)")
