"""Pseudo masks from class activation maps (DESIGN.md §1, stage 2).

A CAM is ReLU of the classifier's 1x1 head applied at every position of the final
feature map. For each image: CAMs at several scales, each with its horizontal flip
(flipped back), upsampled to the input size and summed; the channel of the chosen
class; divided by its max; Gaussian blur; min-max to [0, 1]; pixels above the
threshold are that class's foreground, the rest background.

Everything works on whole batches and stays on the model's device.
"""
import math

import torch
import torch.nn.functional as F

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)


def multiscale_cam(cam_fn, images, scales=DEFAULT_SCALES):
    """Sum of CAMs over scales and flips, at the input's size.

    cam_fn: images [B, 3, h, w] -> non-negative maps [B, K, h', w'].
    images: normalised float [B, 3, H, W]. Returns float32 [B, K, H, W].
    Each scale runs the batch and its mirror image in one forward pass.
    """
    batch, _, height, width = images.shape
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else F.interpolate(
            images, size=size, mode="bilinear", align_corners=False)
        maps = cam_fn(torch.cat([scaled, scaled.flip(-1)])).float()
        maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        summed = maps[:batch] + maps[batch:].flip(-1)
        total = summed if total is None else total + summed
    return total


def gaussian_kernel_size(sigma):
    """OpenCV's choice for float images when the kernel size is left to it: 8 sigma + 1, odd."""
    return int(round(sigma * 8 + 1)) | 1


def gaussian_blur(maps, sigma):
    """Separable Gaussian blur of [B, H, W] maps, borders reflected without repeating the edge
    (OpenCV's default BORDER_REFLECT_101, which is torch's 'reflect').

    A map smaller than the kernel radius gets a kernel cut to fit (reflection needs it).
    """
    if sigma <= 0:
        return maps
    height, width = maps.shape[-2:]
    radius = min(gaussian_kernel_size(sigma) // 2, height - 1, width - 1)
    if radius < 1:
        return maps
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float64)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    x = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def cams_to_masks(cams, class_index, sigma=4.0, threshold=0.5):
    """Masks per the contract: class k where the normalised, blurred CAM of class k > threshold,
    background (value K) elsewhere.

    cams: [B, K, H, W] float; class_index: [B] int. Returns (uint8 masks [B, H, W],
    float [B, H, W] normalised maps). An image whose CAM is zero everywhere gets an all
    background mask.
    """
    num_classes = cams.shape[1]
    rows = torch.arange(cams.shape[0], device=cams.device)
    cam = cams[rows, class_index].float()
    cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
    cam = gaussian_blur(cam, sigma)
    low = cam.amin(dim=(1, 2), keepdim=True)
    high = cam.amax(dim=(1, 2), keepdim=True)
    cam = (cam - low) / (high - low).clamp_min(1e-5)
    foreground = cam > threshold
    masks = torch.where(foreground, class_index.view(-1, 1, 1).to(torch.uint8),
                        torch.full_like(foreground, num_classes, dtype=torch.uint8))
    return masks, cam


def pseudo_masks(model, images, labels=None, scales=DEFAULT_SCALES, sigma=4.0, threshold=0.5):
    """Masks of a batch from a classifier with `forward` (logits) and `cam` (class maps):
    the CAM channel of `labels` when given, else of the predicted class.
    Returns (uint8 masks [B, H, W], predicted classes [B])."""
    predicted = model(images).argmax(1)
    cams = multiscale_cam(model.cam, images, scales)
    # the blur and the threshold stay in float32 even when the caller runs the model in bf16
    with torch.autocast(device_type=images.device.type, enabled=False):
        masks, _ = cams_to_masks(cams, predicted if labels is None else labels, sigma=sigma, threshold=threshold)
    return masks, predicted


def check_scales(scales):
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"--scales must be positive numbers, got {list(scales)}")
    return tuple(scales)
