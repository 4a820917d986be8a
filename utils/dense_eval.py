"""Quality of the dense (K+1)-class network on held-out pseudo masks."""
import torch
import torch.nn.functional as F

from datasets.masks import overlap_counts, overlap_scores, zero_overlap_counts
from datasets.sources import eval_batches
from utils.distributed import shard_indices
from utils.runtime import autocast


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
