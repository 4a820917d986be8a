"""Pseudo masks from class activation maps (stage 2, docs/ARCHITECTURE.md).

A CAM is ReLU of the classifier's 1x1 head applied at every position of the final
feature map. For each image, as the original release's make_cam.py / cam_to_mask.py do:
CAMs at several scales (input rescaled bicubically), each with its horizontal flip
(flipped back), upsampled bilinearly to the input size and summed; the channel of the
chosen class; divided by its max + 1e-5; Gaussian blur with scipy.ndimage.gaussian_filter's
kernel and borders; minus its min, divided by its max when that is not 0; pixels above the
threshold are that class's foreground, the rest background.

Everything works on whole batches and stays on the model's device.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)


def multiscale_cam(dense_fn, images, scales=DEFAULT_SCALES, channels=None, keep_raw=False):
    """Sum of CAMs over scales and flips at the input's size, and the image-level logits.

    dense_fn: images [B, 3, h, w] -> dense logits [B, K, h', w']; a CAM is their ReLU.
    images: normalised float [B, 3, H, W]. channels: None keeps every class's CAM; a long tensor [B]
    keeps one class per image; "predicted" keeps the class the logits predict. Returns (float32
    [B, K, H, W], or [B, 1, H, W] with channels, and logits [B, K] or None); with keep_raw a third
    value, the kept channels' CAM at scale 1 as the network gives it (unflipped, its own h' x w', float32),
    for which a scale-1 pass is added when the scales lack one.
    Each scale runs the batch and its mirror image in one forward pass. The input is rescaled
    bicubically (the release's rescale), the CAMs are upsampled bilinearly. The logits are the
    mean over positions of the unflipped dense logits at scale 1.0, which are the classifier's
    own logits (its head is affine, models/resnetv2.py): no separate classification pass is
    needed. None when the scales do not include 1.0 (and no channel is "predicted").
    Choosing the channel before the upsampling gives the same values (both act per channel) and
    upsamples one map instead of K: 100 classes made the upsampling most of a CAM pass.
    """
    batch, _, height, width = images.shape
    total, logits, unscaled, chosen = None, None, None, None
    if (isinstance(channels, str) or keep_raw) and (not scales or scales[0] != 1.0):  # before the first upsampling
        unscaled = dense_fn(images)
        logits = unscaled.float().mean(dim=(2, 3))
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else F.interpolate(
            images, size=size, mode="bicubic", align_corners=False)
        dense = dense_fn(torch.cat([scaled, scaled.flip(-1)]))
        if size == (height, width) and logits is None:
            unscaled = dense[:batch]
            logits = unscaled.float().mean(dim=(2, 3))
        if channels is not None:
            if chosen is None:
                chosen = logits.argmax(1) if isinstance(channels, str) else channels
            rows = torch.arange(2 * batch, device=dense.device)
            dense = dense[rows, chosen.repeat(2)][:, None]
        maps = F.interpolate(F.relu(dense).float(), size=(height, width), mode="bilinear", align_corners=False)
        summed = maps[:batch] + maps[batch:].flip(-1)
        total = summed if total is None else total + summed
    if not keep_raw:
        return total, logits
    if channels is not None:
        unscaled = unscaled[torch.arange(batch, device=unscaled.device), chosen][:, None]
    return total, logits, F.relu(unscaled).float()


GAUSSIAN_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default


def gaussian_radius(sigma, truncate=GAUSSIAN_TRUNCATE):
    """scipy's kernel radius: the kernel spans int(truncate * sigma + 0.5) pixels each side."""
    return int(truncate * sigma + 0.5)


def _reflected_indices(length, radius, device):
    """Source index of each position of a row padded by `radius` on both sides, with scipy's
    mode 'reflect' (half-sample symmetric, the edge pixel repeated: d c b a | a b c d | d c b a).
    The pattern has period 2 * length, so a pad longer than the row keeps reflecting."""
    positions = torch.arange(-radius, length + radius, device=device) % (2 * length)
    return torch.where(positions < length, positions, 2 * length - 1 - positions)


def gaussian_blur(maps, sigma):
    """scipy.ndimage.gaussian_filter(map, sigma) of every [H, W] map of a [B, H, W] batch:
    the same separable kernel (exp(-x^2 / 2 sigma^2), |x| <= gaussian_radius(sigma), summing to
    1) and the same border rule, for maps of any size, also smaller than the kernel."""
    if sigma <= 0:
        return maps
    radius = gaussian_radius(sigma)
    if radius < 1:
        return maps
    height, width = maps.shape[-2:]
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float64)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    x = maps[:, None].index_select(-1, _reflected_indices(width, radius, maps.device))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = x.index_select(-2, _reflected_indices(height, radius, maps.device))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def cams_to_masks(cams, class_index, sigma=4.0, threshold=0.5):
    """Masks per the contract: class k where the normalised, blurred CAM of class k > threshold,
    background (value K) elsewhere. cams: [B, K, H, W] float; class_index: [B] int. Returns (uint8
    masks [B, H, W], float [B, H, W] normalised maps); see class_map_to_masks."""
    rows = torch.arange(cams.shape[0], device=cams.device)
    return class_map_to_masks(cams[rows, class_index], class_index, cams.shape[1], sigma, threshold)


def class_map_to_masks(cam, class_index, num_classes, sigma=4.0, threshold=0.5):
    """Masks of one CAM per image (cam [B, H, W], the CAM of class class_index [B] of num_classes).
    The normalisations are the release's: before the blur divided by max + 1e-5, after it minus the
    min and divided by the range unless that is 0. An image whose CAM is zero everywhere gets an all
    background mask. Returns (uint8 masks [B, H, W], float [B, H, W] normalised maps)."""
    cam = cam.float()
    cam = cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-5)
    cam = gaussian_blur(cam, sigma)
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    high = cam.amax(dim=(1, 2), keepdim=True)
    cam = cam / torch.where(high > 0, high, torch.ones_like(high))
    foreground = cam > threshold
    masks = torch.where(foreground, class_index.view(-1, 1, 1).to(torch.uint8),
                        torch.full_like(foreground, num_classes, dtype=torch.uint8))
    return masks, cam


@dataclass
class ClassActivations:
    """One class's CAM per image of a batch at each step of the masks' making, and the masks.
    raw: float [B, h, w], the network's CAM at scale 1 (None unless asked for); multiscale: float [B, H, W],
    the sum over scales and flips; blurred: float [B, H, W], normalised and blurred, what the masks
    threshold; masks: uint8 [B, H, W]; predicted: the predicted classes [B]."""
    raw: torch.Tensor | None
    multiscale: torch.Tensor
    blurred: torch.Tensor
    masks: torch.Tensor
    predicted: torch.Tensor


def class_activations(model, images, labels=None, scales=DEFAULT_SCALES, sigma=4.0, threshold=0.5,
                      keep_raw=False) -> ClassActivations:
    """The CAMs and masks of a batch from a classifier with `forward` (logits) and `dense_logits`:
    the CAM channel of `labels` when given, else of the predicted class; with keep_raw also the
    network's scale-1 CAM of that class."""
    cams, logits, *raw = multiscale_cam(model.dense_logits, images, scales,
                                        "predicted" if labels is None else labels, keep_raw=keep_raw)
    if logits is None:
        logits = model(images)
    predicted = logits.argmax(1)
    # the blur and the threshold stay in float32 even when the caller runs the model in bf16
    with torch.autocast(device_type=images.device.type, enabled=False):
        masks, maps = class_map_to_masks(cams[:, 0], predicted if labels is None else labels, logits.shape[1],
                                         sigma=sigma, threshold=threshold)
    return ClassActivations(raw[0][:, 0] if raw else None, cams[:, 0], maps, masks, predicted)


def pseudo_masks(model, images, labels=None, scales=DEFAULT_SCALES, sigma=4.0, threshold=0.5):
    """The masks of class_activations: (uint8 masks [B, H, W], predicted classes [B], float [B, H, W]
    normalised CAMs the masks threshold)."""
    found = class_activations(model, images, labels, scales, sigma, threshold)
    return found.masks, found.predicted, found.blurred


def check_scales(scales):
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"--scales must be positive numbers, got {list(scales)}")
    return tuple(scales)
