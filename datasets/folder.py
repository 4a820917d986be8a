"""ImageFolder splits decoded once to uint8 tensors, with their pseudo masks.

Layout (docs/CONTRACTS.md §1, §2): images in `<split root>/<class>/<image>`; the masks of a split in
the sibling folder `<split root>_mask/<class>/<image stem>.png` (uint8: k < K = class k
foreground, K = background, 255 = ignore; both defined in datasets/masks.py). Only files
directly inside a class folder are images of that class (nested folders are not searched),
so every image has exactly one mask path. Hidden files (e.g. the temporaries of
`utils.base.io.atomic_path`) are skipped.

Masks of the original release's make_cam.py hold 0 for background and k + 1 for class k;
a dataset reading them with mask_format 'official' converts them to the contract on read.
"""
import copy
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.masks import (IGNORE_INDEX, MASK_FORMATS, expected_values, invalid_values, mask_path,
                            mask_root_for, named_path)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
_LAYOUT = "<root>/<class>/<image>"
_SKIP_HINT = " (fix or remove it, or pass --skip_corrupt to leave unreadable images out)"


def is_image_file(path):
    path = Path(path)
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def find_classes(root):
    """Sorted names of the class folders of an ImageFolder split."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist (expected layout {_LAYOUT})")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset path {root} is not a folder (expected layout {_LAYOUT})")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = sum(1 for p in root.iterdir() if p.is_file() and is_image_file(p))
        hint = (f"; its {loose} images lie directly inside it: move them into one sub-folder, e.g. {root / 'all'}"
                " (an OOD set may have a single class folder)" if loose else "")
        raise FileNotFoundError(f"dataset folder {root} has no class sub-folders (expected layout {_LAYOUT}){hint}")
    return classes


def _check_classes_match(root, found, expected):
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected or len(expected) != len(set(expected)):
        raise ValueError(
            f"class folders of {root} do not match the expected {len(expected)} classes: "
            f"missing {missing}, unexpected {unexpected}"
            + ("" if len(expected) == len(set(expected)) else "; the expected class list has duplicates"))


def _images_in_class_folder(folder):
    images = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    if not images:
        raise FileNotFoundError(
            f"class folder {folder} holds no images directly inside it (extensions "
            f"{', '.join(IMG_EXTENSIONS)}; nested folders are not searched)")
    by_stem = {}
    for image in images:
        if image.stem in by_stem:
            raise ValueError(f"{by_stem[image.stem]} and {image} share the stem {image.stem!r}, "
                             f"so they would share one mask file; rename one of them")
        by_stem[image.stem] = image
    return images


def list_samples(root, classes=None):
    """[(image path, label)] sorted by (label, filename).

    `classes` (e.g. the class list stored in a checkpoint) fixes the label order and must
    equal the set of class folders; by default the sorted folder names are the classes.
    """
    root = Path(root)
    found = find_classes(root)
    if classes is None:
        classes = found
    else:
        classes = list(classes)
        _check_classes_match(root, found, classes)
    return [(image, label) for label, name in enumerate(classes)
            for image in _images_in_class_folder(root / name)]


def dataset_name(split_root, role):
    """Name of a split in result files (docs/CONTRACTS.md §1).

    role 'id':  dataset/cifar10/test -> cifar10_test (folder above the split + split).
    role 'ood': dataset/Textures -> Textures; a split-named folder takes the name of the
                folder above it: dataset/SVHN/test -> SVHN.
    """
    split_root = named_path(split_root)
    if role == "id":
        return f"{split_root.parent.name}_{split_root.name}"
    if role == "ood":
        return split_root.parent.name if split_root.name.lower() in SPLIT_NAMES else split_root.name
    raise ValueError(f"role must be 'id' or 'ood', got {role!r}")


def _missing_mask_error(path, root):
    return FileNotFoundError(f"mask {path} is missing; run make_cam.py --dataset={root} "
                             f"to write the masks of that split")


def _first(paths, count=3):
    return ", ".join(map(str, paths[:count])) + (", ..." if len(paths) > count else "")


def _decode_problem(path):
    """None if the image decodes completely, else the reason it does not."""
    try:
        with Image.open(path) as image:
            image.load()
        return None
    except (OSError, ValueError, SyntaxError) as err:
        return f"{type(err).__name__}: {err}"


def find_unreadable(paths, threads=8):
    """[(path, reason)] of the images that do not decode completely (truncated, corrupt, not images)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes without holding the GIL
        problems = list(pool.map(_decode_problem, paths))
    return [(path, problem) for path, problem in zip(paths, problems) if problem is not None]


def _to_rgb(image):
    """8-bit RGB of any PIL mode. 16-bit grayscale (PNG mode I;16 / I) is scaled to 8 bits,
    which PIL's own conversion would clip to white instead."""
    if image.mode.startswith("I;16") or image.mode == "I":
        gray = (np.asarray(image, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


def _checked_image_size(image_size):
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    return image_size


class ImageFolderDataset(Dataset):
    """An ImageFolder split; item i -> dict(image=uint8 [3,H,W], label=int64, index=i[, mask=uint8 [Hm,Wm]]).

    image_size: None keeps the native size (see `native_size`); an int resizes every image to
    image_size x image_size on decode (PIL bilinear, antialiased when downscaling).
    Masks keep their native size; `num_classes` (K) is required with masks, to check values.
    skip_corrupt: leave out images that do not decode (listed in `skipped`) instead of failing
    on the first one; every image is decoded once more to find them.
    """

    def __init__(self, root, image_size=None, with_masks=False, mask_root=None, num_classes=None,
                 classes=None, skip_corrupt=False):
        self.root = Path(root)
        self.samples = list_samples(self.root, classes)
        self.skipped = []
        if skip_corrupt:
            self._leave_out_unreadable()
        self.classes = list(classes) if classes is not None else find_classes(self.root)
        self.image_size = None if image_size is None else _checked_image_size(image_size)
        self.with_masks = with_masks
        self.num_classes = num_classes
        self.mask_format = "ours"
        self.mask_root, self.mask_size = None, None
        if with_masks:
            self._check_num_classes(num_classes)
            self.mask_root = Path(mask_root) if mask_root is not None else mask_root_for(self.root)
            self._check_masks_exist()
            self._check_mask_sizes()

    def _leave_out_unreadable(self):
        self.skipped = find_unreadable([path for path, _ in self.samples])
        if not self.skipped:
            return
        bad = {path for path, _ in self.skipped}
        self.samples = [sample for sample in self.samples if sample[0] not in bad]
        print(f"[data] --skip_corrupt: left out {len(self.skipped)} unreadable images of {self.root}: "
              + "; ".join(f"{path} ({reason})" for path, reason in self.skipped[:3])
              + ("; ..." if len(self.skipped) > 3 else ""))
        if not self.samples:
            raise ValueError(f"no image of {self.root} could be decoded ({len(self.skipped)} unreadable)")

    def _check_num_classes(self, num_classes):
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes (K, the background value of the masks) is required with "
                             f"masks and must be a positive int, got {num_classes!r}")
        if num_classes != len(self.classes):
            raise ValueError(f"num_classes={num_classes} but {self.root} has {len(self.classes)} "
                             f"class folders")

    def _check_masks_exist(self):
        # Fail before hours of decoding/training, not at the first missing file.
        missing = [p for p in map(self.mask_path, range(len(self))) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self)} masks are missing under {self.mask_root} (first: "
                f"{_first(missing)}); run make_cam.py --dataset={self.root} to write the masks of that split")

    def _check_mask_sizes(self):
        """Masks are resized with their images, so one split must have one mask size."""
        first_path, first_size = None, None
        for path in map(self.mask_path, range(len(self))):
            try:
                with Image.open(path) as mask:
                    size = mask.size
            except (OSError, SyntaxError) as err:
                raise OSError(f"cannot read mask file {path}: {err}") from err
            if first_size is None:
                first_path, first_size = path, size
            elif size != first_size:
                raise ValueError(f"masks of one split must share one size: {first_path} is "
                                 f"{first_size[0]}x{first_size[1]}, {path} is {size[0]}x{size[1]} (WxH); "
                                 f"rewrite them with make_cam.py --overwrite")
        self.mask_size = (first_size[1], first_size[0])

    def resized(self, image_size):
        """This split decoding every image at image_size x image_size."""
        resized = copy.copy(self)
        resized.image_size = _checked_image_size(image_size)
        return resized

    def reading_masks_as(self, mask_format):
        """This split reading its mask files in `mask_format` (one of MASK_FORMATS)."""
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask format must be one of {MASK_FORMATS}, got {mask_format!r}")
        converted = copy.copy(self)
        converted.mask_format = mask_format
        return converted

    def __len__(self):
        return len(self.samples)

    def mask_path(self, index):
        return mask_path(self.mask_root, self.samples[index][0])

    def native_size(self):
        """(H, W) shared by all images as decoded; reads only image headers.

        Raises ValueError naming two files of different sizes when there is no common size.
        """
        if self.image_size is not None:
            return self.image_size, self.image_size
        first_path, size = None, None
        for path, _ in self.samples:
            try:
                with Image.open(path) as image:
                    width, height = image.size
            except (OSError, ValueError) as err:
                raise OSError(f"cannot read the header of image {path}: {err}{_SKIP_HINT}") from err
            if size is None:
                first_path, size = path, (height, width)
            elif (height, width) != size:
                raise ValueError(
                    f"images of {self.root} differ in size: {first_path} is {size[1]}x{size[0]}, "
                    f"{path} is {width}x{height} (WxH); pass an image size to decode at "
                    f"(e.g. image_size={max(size)})")
        return size

    def load_image(self, index):
        path = self.samples[index][0]
        try:
            with Image.open(path) as image:
                image = _to_rgb(image)
                if self.image_size is not None and image.size != (self.image_size, self.image_size):
                    image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
                pixels = np.array(image, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises SyntaxError on some broken headers
            raise OSError(f"cannot decode image file {path}: {err}{_SKIP_HINT}") from err
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def load_mask(self, index):
        path = self.mask_path(index)
        try:
            with Image.open(path) as mask:
                if mask.mode not in ("L", "P"):
                    raise ValueError(f"mask {path} has PIL mode {mask.mode}; expected one 8-bit channel")
                values = torch.from_numpy(np.array(mask, dtype=np.uint8))
        except FileNotFoundError:
            raise _missing_mask_error(path, self.root) from None
        except (OSError, SyntaxError) as err:
            raise OSError(f"cannot decode mask file {path}: {err}") from err
        # both formats use the values 0..K and 255
        bad = invalid_values(values, self.num_classes)
        if bad.any():
            raise ValueError(f"mask {path} holds value {int(values[bad][0])}; "
                             f"expected {expected_values(self.num_classes, self.mask_format)}")
        if self.mask_format == "official":
            values = torch.where(values == 0, self.num_classes,
                                 torch.where(values == IGNORE_INDEX, IGNORE_INDEX, values - 1)).to(torch.uint8)
        return values

    def __getitem__(self, index):
        item = {"image": self.load_image(index),
                "label": torch.tensor(self.samples[index][1], dtype=torch.int64),
                "index": index}
        if self.with_masks:
            item["mask"] = self.load_mask(index)
        return item


class _BatchStacker:
    """collate_fn that stacks a batch and names the file when sizes differ (default collate would not)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __call__(self, items):
        batch = {"index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
                 "label": torch.stack([item["label"] for item in items])}
        keys = ("image", "mask") if "mask" in items[0] else ("image",)
        for key in keys:
            shape = items[0][key].shape
            for item in items:
                if item[key].shape != shape:
                    raise ValueError(_size_mismatch_message(self.dataset, key, items[0]["index"], shape,
                                                            item["index"], item[key].shape))
            batch[key] = torch.stack([item[key] for item in items])
        return batch


def _file_of(dataset, key, index):
    return dataset.mask_path(index) if key == "mask" else dataset.samples[index][0]


def _size_mismatch_message(dataset, key, first_index, first_shape, index, shape):
    hint = ("; pass image_size to decode all images at one size" if key == "image"
            else "; masks of one split must share one size")
    return (f"cannot stack {key}s of different sizes: {_file_of(dataset, key, first_index)} is "
            f"{tuple(first_shape)}, {_file_of(dataset, key, index)} is {tuple(shape)}{hint}")


def decode_all(dataset, batch_size=256, workers=0, progress=True, desc=None):
    """Decode a whole ImageFolderDataset: dict(images=uint8 [N,3,H,W], labels=int64 [N][, masks=uint8 [N,Hm,Wm]])."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_BatchStacker(dataset))
    out = {}
    first_index = {}
    with tqdm(total=len(dataset), desc=desc or str(dataset.root), unit="img", disable=not progress) as bar:
        for batch in loader:
            index = batch["index"]
            for key, target in (("image", "images"), ("label", "labels"), ("mask", "masks")):
                if key not in batch:
                    continue
                values = batch[key]
                if target not in out:
                    out[target] = torch.empty((len(dataset), *values.shape[1:]), dtype=values.dtype)
                    first_index[key] = int(index[0])
                elif values.shape[1:] != out[target].shape[1:]:
                    raise ValueError(_size_mismatch_message(dataset, key, first_index[key], out[target].shape[1:],
                                                            int(index[0]), values.shape[1:]))
                out[target][index] = values
            bar.update(len(index))
    return out
