"""Random scale + crop + flip of an image and its mask, with one geometry for both.

The dense stage of the release ships DeepLab-style joint transforms (`ExtRandomScale`,
`ExtRandomCrop` with padding, `ExtRandomHorizontalFlip`): scale the image and its mask by a
random factor s ~ U(lo, hi), crop `resolution` pixels at a random place, padding the image with
black and the mask with 255 (ignore) where the scaled image is smaller than the crop, and flip.
Here the image has first been resized to train_size (as in the plain recipe), and the three steps
are one resampling: output pixel j (centre j + 0.5) reads the train_size image at
(offset + j + 0.5) / s, bilinearly for the image and nearest for the mask, so the two share every
coordinate. The offset is uniform over [0, s * train_size - resolution] when the scaled image is
at least as large as the crop, else the scaled image is centred (padding on both sides, as
ExtRandomCrop pads). Used by both the batched device path (`datasets.batch_augment`) and the
per-sample path (`datasets.transforms.TrainJointTransform`).
"""
import torch
import torch.nn.functional as F

from datasets.masks import IGNORE_INDEX


def check_scale_range(scale_range):
    """(lo, hi) as floats with 0 < lo <= hi, else ValueError."""
    try:
        low, high = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise ValueError(f"scale_range must be two numbers (lo, hi), got {scale_range!r}") from None
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got ({low}, {high})")
    return low, high


def sample_scaled_crops(batch, train_size, resolution, scale_range, device, generator=None):
    """Per-sample (scales [B], tops [B], lefts [B], flips bool [B]) on `device`; tops and lefts are
    offsets in the scaled image's pixels (negative: the scaled image is centred in padding)."""
    low, high = check_scale_range(scale_range)
    draw_on = generator.device if generator is not None else device
    uniform = torch.rand(3, batch, generator=generator, device=draw_on, dtype=torch.float64)
    flips = torch.rand(batch, generator=generator, device=draw_on) < 0.5
    scales = low + (high - low) * uniform[0]
    room = scales * train_size - resolution           # how far the crop can move in the scaled image
    tops = torch.where(room >= 0, uniform[1] * room, room / 2)
    lefts = torch.where(room >= 0, uniform[2] * room, room / 2)
    return tuple(t.to(device) for t in (scales, tops, lefts, flips))


def sampling_grid(crops, train_size, resolution, device):
    """grid_sample's [B, r, r, 2] grid (x, y in [-1, 1], align_corners=False) of the crops."""
    scales, tops, lefts, flips = (c.to(device) for c in crops)
    centres = torch.arange(resolution, device=device, dtype=torch.float64) + 0.5
    rows = (tops[:, None] + centres) / scales[:, None]                                     # [B, r]
    mirrored = torch.where(flips[:, None], resolution - centres, centres)
    cols = (lefts[:, None] + mirrored) / scales[:, None]                                   # [B, r]
    x = (2 * cols / train_size - 1)[:, None, :].expand(-1, resolution, -1)
    y = (2 * rows / train_size - 1)[:, :, None].expand(-1, -1, resolution)
    return torch.stack([x, y], dim=-1).float()


def scaled_crop_and_flip(pixels, masks, crops, resolution):
    """(float [B,3,S,S] 0..255, uint8 [B,S,S] or None) -> (float [B,3,r,r], uint8 [B,r,r] or None).

    Outside the scaled image the image is 0 (black) and the mask IGNORE_INDEX."""
    train_size = pixels.shape[-1]
    grid = sampling_grid(crops, train_size, resolution, pixels.device)
    out = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is None:
        return out, None
    # Shifted by one so that the zero padding becomes -1, i.e. IGNORE_INDEX after the shift back
    shifted = F.grid_sample(masks[:, None].float() + 1, grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)[:, 0]
    out_masks = torch.where(shifted > 0, shifted - 1, torch.full_like(shifted, IGNORE_INDEX))
    return out, out_masks.round().to(torch.uint8)
