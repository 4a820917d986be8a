"""Quality of the dense (K+1)-class network on held-out pseudo masks."""
import torch
import torch.nn.functional as F

from datasets.masks import overlap_counts, overlap_scores, zero_overlap_counts
from datasets.sources import eval_batches
from utils.base.distributed import shard_indices
from utils.base.runtime import autocast


@torch.no_grad()
def evaluate_masks(model, dataset, resolution, device, batch_size, amp, num_classes, rank=0, world_size=1,
                   workers=0):
    """Pixel accuracy and foreground / background IoU of the dense prediction against the
    masks, by the rule of datasets.masks.overlap_scores (255 ignored; NaN when there is nothing
    to score). Foreground = any of the K object classes."""
    model.eval()
    counts = zero_overlap_counts(num_classes, device)
    indices = shard_indices(len(dataset), rank, world_size)
    for images, _, batch in eval_batches(dataset, resolution, device, batch_size, workers, indices):
        masks = batch["mask"].to(device)
        if masks.shape[-2:] != images.shape[-2:]:
            masks = F.interpolate(masks[:, None].float(), size=images.shape[-2:], mode="nearest")[:, 0].to(torch.uint8)
        with autocast(device, amp):
            prediction = model.dense_logits(images, upsample=True).argmax(1)
        counts += overlap_counts(prediction, masks, num_classes)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    scores = overlap_scores(counts, num_classes)
    return {key: scores[key] for key in ("pixel_accuracy", "foreground_iou", "background_iou")}


def blob_scores(foreground: torch.Tensor) -> dict:
    """How much a set's predicted foregrounds are one shared blob. foreground: bool [N, H, W].

    typical = the pixels that are foreground in at least half of the images (the set's average
    foreground, thresholded at 0.5); blob_iou = the mean over images of IoU(image's foreground,
    typical), images whose foreground and typical are both empty left out (NaN if all are).
    Near 1: every image gets the same blob wherever its object is; low: foregrounds vary."""
    if foreground.dtype != torch.bool or foreground.dim() != 3:
        raise ValueError(f"foreground: expected a bool [N, H, W] tensor, got {foreground.dtype} {tuple(foreground.shape)}")
    if foreground.shape[0] == 0:
        raise ValueError("foreground: no images")
    typical = foreground.float().mean(0) >= 0.5
    intersection = (foreground & typical).flatten(1).sum(1).double()
    union = (foreground | typical).flatten(1).sum(1).double()
    scored = union > 0
    return {"images": int(foreground.shape[0]), "foreground_fraction": foreground.float().mean().item(),
            "typical_foreground_fraction": typical.float().mean().item(),
            "blob_iou": (intersection[scored] / union[scored]).mean().item() if scored.any() else float("nan")}


@torch.no_grad()
def foreground_layout(model, dataset, resolution, device, batch_size, amp, num_classes, max_images, seed=0,
                      workers=0):
    """blob_scores of the dense prediction (foreground = any of the K object classes) on at most
    `max_images` images of `dataset` (a seeded subset of larger sets)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    count = min(max_images, len(dataset))
    indices = sorted(torch.randperm(len(dataset), generator=generator)[:count].tolist())
    maps = []
    for images, _, _ in eval_batches(dataset, resolution, device, batch_size, workers, indices):
        with autocast(device, amp):
            prediction = model.dense_logits(images, upsample=True).argmax(1)
        maps.append((prediction != num_classes).cpu())
    return blob_scores(torch.cat(maps))
