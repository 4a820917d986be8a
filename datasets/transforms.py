"""Per-sample joint image + mask transforms on uint8 tensors (CPU, DataLoader workers).

BiT / DFB recipe. Train: resize (square) to train_size = round(resolution * 160 / 128),
random crop resolution x resolution, horizontal flip with p = 0.5. Test: resize to resolution.
Images are resized bilinearly (antialiased when downscaling), masks with nearest neighbour
at pixel centres ("nearest-exact": source = floor((i + 0.5) * in / out)), so that a mask of
another native size (e.g. 128x128 for a 32x32 image) stays aligned with its image; the
same crop and flip are then applied to both.
`datasets.batch_augment` implements the same distribution on whole batches on the device.
"""
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from datasets.scale_crop import check_scale_range, sample_scaled_crops, scaled_crop_and_flip


def default_train_size(resolution):
    """BiT resize-before-crop size: 160 for 128, 40 for 32."""
    return round(resolution * 160 / 128)


def check_sizes(resolution, train_size):
    """Validated (resolution, train_size), train_size defaulting to `default_train_size`."""
    if not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if train_size is None:
        train_size = default_train_size(resolution)
    if not isinstance(train_size, int) or train_size < resolution:
        raise ValueError(f"train_size must be an int >= resolution ({resolution}), got {train_size!r}")
    return resolution, train_size


def check_uint8(tensor, name, dims):
    """Raise unless `tensor` is uint8 with len(dims) dims; dims given as digits must match exactly."""
    if (not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.dim() != len(dims)
            or any(d.isdigit() and int(d) != n for d, n in zip(dims, tensor.shape))):
        got = f"{tensor.dtype} {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a uint8 tensor [{','.join(dims)}], got {got}")


def normalize(images):
    """uint8 pixels (any shape) -> float32 x = uint8 / 127.5 - 1 (mean = std = 0.5)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise ValueError(f"normalize expects a uint8 tensor, got {getattr(images, 'dtype', type(images))}")
    return normalize_float(images.float())


def normalize_float(pixels):
    """Float tensor holding 0..255 pixel values (e.g. after a float resize) -> x = pixels / 127.5 - 1."""
    return pixels / 127.5 - 1


def sample_crop_and_flip(train_size, resolution, generator=None):
    """(top, left, flip): offsets uniform over 0..train_size - resolution, flip with p = 0.5."""
    top, left = torch.randint(0, train_size - resolution + 1, (2,), generator=generator).tolist()
    flip = bool(torch.rand((), generator=generator) < 0.5)
    return top, left, flip


def _resize_image(image, size):
    return TF.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def _resize_mask(mask, size):
    return TF.resize(mask[None], [size, size], interpolation=InterpolationMode.NEAREST_EXACT)[0]


def _crop_and_flip(tensor, top, left, size, flip):
    out = tensor[..., top:top + size, left:left + size]
    return (out.flip(-1) if flip else out).contiguous()


class TrainJointTransform:
    """(image uint8 [3,H,W], mask uint8 [Hm,Wm] or None) -> (image uint8 [3,r,r], mask uint8 [r,r] or None).

    scale_range = (lo, hi): random scale + crop + flip of datasets.scale_crop instead of the crop."""

    def __init__(self, resolution, train_size=None, scale_range=None):
        self.resolution, self.train_size = check_sizes(resolution, train_size)
        self.scale_range = check_scale_range(scale_range) if scale_range is not None else None

    def __call__(self, image, mask=None, generator=None):
        check_uint8(image, "image", ("3", "H", "W"))
        image = _resize_image(image, self.train_size)
        if mask is not None:
            check_uint8(mask, "mask", ("Hm", "Wm"))
            mask = _resize_mask(mask, self.train_size)
        if self.scale_range is not None:
            crops = sample_scaled_crops(1, self.train_size, self.resolution, self.scale_range, image.device, generator)
            pixels, masks = scaled_crop_and_flip(image[None].float(), mask[None] if mask is not None else None,
                                                 crops, self.resolution)
            image = pixels[0].round().clamp(0, 255).to(torch.uint8)
            return image, (masks[0] if masks is not None else None)
        top, left, flip = sample_crop_and_flip(self.train_size, self.resolution, generator)
        image = _crop_and_flip(image, top, left, self.resolution, flip)
        if mask is not None:
            mask = _crop_and_flip(mask, top, left, self.resolution, flip)
        return image, mask

    def __repr__(self):
        return (f"TrainJointTransform(resolution={self.resolution}, train_size={self.train_size}, "
                f"scale_range={self.scale_range})")
