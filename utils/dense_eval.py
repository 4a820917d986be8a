"""Quality of the dense (K+1)-class network on held-out pseudo masks."""
import torch
import torch.nn.functional as F

from datasets.sources import eval_batches
from utils.distributed import shard_indices
from utils.runtime import autocast


@torch.no_grad()
def evaluate_masks(model, dataset, resolution, device, batch_size, amp, num_classes, rank=0, world_size=1,
                   workers=0):
    """Pixel accuracy and foreground / background IoU of the dense prediction against the
    masks (255 ignored). Foreground = any of the K object classes."""
    model.eval()
    counts = torch.zeros(5, dtype=torch.float64, device=device)  # correct, valid, fg∩, fg∪, bg∩ (bg∪ derived)
    bg_union = torch.zeros((), dtype=torch.float64, device=device)
    indices = shard_indices(len(dataset), rank, world_size)
    for images, _, batch in eval_batches(dataset, resolution, device, batch_size, workers, indices):
        masks = batch["mask"].to(device)
        if masks.shape[-2:] != images.shape[-2:]:
            masks = F.interpolate(masks[:, None].float(), size=images.shape[-2:], mode="nearest")[:, 0].to(torch.uint8)
        with autocast(device, amp):
            prediction = model.dense_logits(images, upsample=True).argmax(1)
        valid = masks != 255
        true_fg, pred_fg = (masks < num_classes) & valid, (prediction < num_classes) & valid
        true_bg, pred_bg = (masks == num_classes) & valid, (prediction == num_classes) & valid
        counts += torch.stack([((prediction == masks) & valid).sum(), valid.sum(), (true_fg & pred_fg).sum(),
                               (true_fg | pred_fg).sum(), (true_bg & pred_bg).sum()]).double()
        bg_union += (true_bg | pred_bg).sum()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
        torch.distributed.all_reduce(bg_union)
    correct, valid, fg_inter, fg_union, bg_inter = counts.tolist()
    return {"pixel_accuracy": correct / max(valid, 1), "foreground_iou": fg_inter / max(fg_union, 1),
            "background_iou": bg_inter / max(bg_union.item(), 1)}
