"""Augmentation of whole uint8 batches on the device the tensors live on (CPU or CUDA).

Same distribution as the per-sample `datasets.transforms.TrainJointTransform` (BiT / DFB:
square resize to train_size, random crop resolution, h-flip p = 0.5; masks nearest at pixel
centres so that masks of another native size stay aligned), vectorised: each sample's crop
and flip become row / column index tensors, and one gather applies them to the batch.
Images stay float after the resize (no re-quantisation) and come out normalised with
mean = std = 0.5.
"""
import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import betaincinv

from datasets.scale_crop import sample_scaled_crops, scaled_crop_and_flip
from datasets.transforms import check_sizes, check_uint8, normalize_float


def _sampling_device(generator, device):
    # A torch.Generator draws only on its own device; its numbers are moved afterwards.
    return generator.device if generator is not None else device


def resize_float(images, size):
    """uint8 [B,3,h,w] -> float [B,3,size,size] holding 0..255 values (bilinear, antialiased when downscaling)."""
    pixels = images.float()
    if pixels.shape[-2:] == (size, size):
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_masks(masks, size):
    """uint8 [B,hm,wm] -> uint8 [B,size,size], nearest at pixel centres: source = floor((i + 0.5) * in / out)."""
    if masks.shape[-2:] == (size, size):
        return masks
    return F.interpolate(masks[:, None], size=(size, size), mode="nearest-exact")[:, 0]


def reflect_pad(tensor, pad):
    """[B,...,S,S] -> [B,...,S+2p,S+2p] mirrored at the borders (the edge pixel not repeated, as
    F.pad's 'reflect'), for any dtype (uint8 masks too)."""
    size = tensor.shape[-1]
    if not 0 <= pad < size:
        raise ValueError(f"a reflection pad of {pad} px needs images larger than {pad} px, got {size}")
    index = torch.arange(-pad, size + pad, device=tensor.device).abs()
    index = torch.where(index >= size, 2 * (size - 1) - index, index)
    return tensor[..., index[:, None], index[None, :]]


def sample_crops(batch, train_size, resolution, device, generator=None):
    """Per-sample (tops [B], lefts [B], flips bool [B]) on `device`; offsets uniform over 0..train_size - resolution."""
    draw_on = _sampling_device(generator, device)
    high = train_size - resolution + 1
    tops = torch.randint(0, high, (batch,), generator=generator, device=draw_on)
    lefts = torch.randint(0, high, (batch,), generator=generator, device=draw_on)
    flips = torch.rand(batch, generator=generator, device=draw_on) < 0.5
    return tops.to(device), lefts.to(device), flips.to(device)


FLIP_MODES = ("random", "alternate")
FLIP_STREAM = 0xF11B  # numpy's SeedSequence of [seed, FLIP_STREAM] is independent of every other draw of a run


def first_epoch_flips(num_items, seed):
    """bool [num_items]: which training images `alternating_flips` mirrors in epoch 0 (p = 0.5 each),
    drawn once from the run's seed, so a resumed run mirrors the same images."""
    return torch.from_numpy(np.random.default_rng([seed, FLIP_STREAM]).random(num_items) < 0.5)


def alternating_flips(first_flips, items, epoch):
    """The flips of the training images `items` [B] in `epoch`, alternated per epoch (airbench's
    scheme): image i is mirrored iff first_flips[i] xor (epoch is odd). Every image is then seen both
    ways in any two consecutive epochs; independent flips (p = 0.5 per draw) leave half of them seen one
    way only."""
    return first_flips.to(items.device)[items] ^ bool(epoch % 2)


def draw_crops(batch, train_size, resolution, device, generator=None, scale_range=None):
    """The per-sample geometry `train_augment` applies: `sample_crops`, or with scale_range = (lo, hi)
    `sample_scaled_crops` (random scale + crop + flip)."""
    if scale_range is None:
        return sample_crops(batch, train_size, resolution, device, generator)
    return sample_scaled_crops(batch, train_size, resolution, scale_range, device, generator)


def crop_and_flip(tensor, tops, lefts, flips, resolution):
    """Crop [B,...,S,S] at per-sample (top, left) to [B,...,r,r], mirroring columns where flips is True."""
    steps = torch.arange(resolution, device=tensor.device)
    rows = tops[:, None] + steps                                                   # [B, r]
    cols = lefts[:, None] + torch.where(flips[:, None], resolution - 1 - steps, steps)  # [B, r]
    samples = torch.arange(tensor.shape[0], device=tensor.device)[:, None, None]
    # Spatial dims next to the batch dim, so the three index tensors broadcast to [B, r, r].
    spatial_first = tensor.movedim((-2, -1), (1, 2))
    picked = spatial_first[samples, rows[:, :, None], cols[:, None, :]]
    return picked.movedim((1, 2), (-2, -1)).contiguous()


def train_augment(images, masks, resolution, train_size=None, generator=None, crops=None, scale_range=None,
                  pad=False):
    """(uint8 [B,3,h,w], uint8 [B,hm,wm] or None) -> (float normalised [B,3,r,r], uint8 [B,r,r] or None).

    Resize to train_size (default round(r * 160 / 128)), then per-sample random crop r and
    h-flip (p = 0.5), the same for an image and its mask. `crops` = (tops, lefts, flips) from
    `sample_crops` replaces the draw, e.g. a slice of the draw for a whole global batch.
    With scale_range = (lo, hi), a random scale + crop + flip (datasets.scale_crop) replaces the
    crop; `crops` are then (scales, tops, lefts, flips) from `sample_scaled_crops` (`draw_crops`
    draws either kind). With pad, the image (and mask) is resized to r and reflection-padded to
    train_size instead of resized to it: the crop translates by up to (train_size - r) / 2 px each way
    without the resize's zoom (the fast CIFAR recipes' translation).
    """
    resolution, train_size = check_sizes(resolution, train_size)
    check_uint8(images, "images", ("B", "3", "h", "w"))
    if masks is not None:
        check_uint8(masks, "masks", ("B", "hm", "wm"))
        if masks.shape[0] != images.shape[0] or masks.device != images.device:
            raise ValueError(f"masks {tuple(masks.shape)} on {masks.device} do not match images "
                             f"{tuple(images.shape)} on {images.device}")
    if pad and (scale_range is not None or (train_size - resolution) % 2):
        raise ValueError(f"pad: the crop of {resolution} px from a padded {train_size} px image needs an even "
                         f"difference and no scale_range")
    if crops is None:
        crops = draw_crops(images.shape[0], train_size, resolution, images.device, generator, scale_range)
    if scale_range is not None:
        masks = resize_masks(masks, train_size) if masks is not None else None
        pixels, masks = scaled_crop_and_flip(resize_float(images, train_size), masks, crops, resolution)
        return normalize_float(pixels), masks
    tops, lefts, flips = (c.to(images.device) for c in crops)
    if pad:
        border = (train_size - resolution) // 2
        enlarged = reflect_pad(resize_float(images, resolution), border)
        masks = reflect_pad(resize_masks(masks, resolution), border) if masks is not None else None
    else:
        enlarged = resize_float(images, train_size)
        masks = resize_masks(masks, train_size) if masks is not None else None
    pixels = crop_and_flip(enlarged, tops, lefts, flips, resolution)
    if masks is not None:
        masks = crop_and_flip(masks, tops, lefts, flips, resolution)
    return normalize_float(pixels), masks


def test_resize(images, resolution):
    """uint8 [B,3,h,w] -> float normalised [B,3,r,r] (square bilinear resize, antialiased when downscaling)."""
    resolution, _ = check_sizes(resolution, resolution)
    check_uint8(images, "images", ("B", "3", "h", "w"))
    return normalize_float(resize_float(images, resolution))


test_resize.__test__ = False  # not a pytest test despite its name


def _as_soft_targets(labels, batch, num_classes):
    if labels.dtype in (torch.int64, torch.int32, torch.uint8) and labels.shape == (batch,):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
        return F.one_hot(labels.long(), num_classes).float()
    if labels.is_floating_point() and labels.shape == (batch, num_classes):
        return labels
    raise ValueError(f"labels must be integer [{batch}] or float one-hot / soft [{batch},{num_classes}], "
                     f"got {labels.dtype} {tuple(labels.shape)}")


def mixup(x, labels, num_classes, alpha, generator=None, rank=0, gather=None):
    """MixUp (Zhang et al. 2018) as in BiT: one lambda ~ Beta(alpha, alpha) per batch.

    x_mixed = lam * x + (1 - lam) * x[perm], targets = lam * y + (1 - lam) * y[perm], with a
    random permutation perm of the batch; returns (x_mixed, soft targets float [B, K]).
    lambda is drawn by inverting the Beta CDF at a uniform from `generator`, so a seeded
    generator reproduces it. Callers skip MixUp when alpha is 0.

    Under torchrun, x and labels are slice `rank` of the global batch and `gather` concatenates
    the slices of all ranks (an all-gather). Every rank then draws lambda and a permutation of
    the whole global batch from the same generator and mixes its own images with their partners,
    wherever those live: N processes mix exactly the pairs one process mixes. Pairing only
    within a rank's slice would make the pairs, and so the weights, depend on the process count.
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0 (skip MixUp for alpha 0), got {alpha!r}")
    if not x.is_floating_point():
        raise ValueError(f"mixup expects float (normalised) images, got {x.dtype}")
    targets = _as_soft_targets(labels.to(x.device), x.shape[0], num_classes)
    all_x, all_targets = (gather(x), gather(targets)) if gather is not None else (x, targets)
    draw_on = _sampling_device(generator, x.device)
    uniform = torch.rand((), generator=generator, device=draw_on, dtype=torch.float64).item()
    lam = float(betaincinv(alpha, alpha, uniform))
    perm = torch.randperm(all_x.shape[0], generator=generator, device=draw_on).to(x.device)
    partners = perm[rank * x.shape[0]:(rank + 1) * x.shape[0]]
    return lam * x + (1 - lam) * all_x[partners], lam * targets + (1 - lam) * all_targets[partners]


def patch_shuffle(images, grid=4, generator=None):
    """Cut each image [B,C,H,W] into grid x grid tiles and permute the tiles, independently per image.

    Destroys objects while keeping colours and local texture: a pseudo-OOD set made from ID
    images, for choices that must not look at the test OOD sets.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B,C,H,W], got {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if not isinstance(grid, int) or grid < 1 or height % grid or width % grid:
        raise ValueError(f"grid must be a positive int dividing the image size {height}x{width}, got {grid!r}")
    tile_h, tile_w = height // grid, width // grid
    tiles = (images.reshape(batch, channels, grid, tile_h, grid, tile_w)
             .permute(0, 2, 4, 1, 3, 5).reshape(batch, grid * grid, channels, tile_h, tile_w))
    draw_on = _sampling_device(generator, images.device)
    order = torch.rand(batch, grid * grid, generator=generator, device=draw_on).argsort(dim=1).to(images.device)
    shuffled = tiles[torch.arange(batch, device=images.device)[:, None], order]
    return (shuffled.reshape(batch, grid, grid, channels, tile_h, tile_w)
            .permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width))
