"""Batched inference: image-level logits and pooled features of a whole split, in dataset
order, sharded across torchrun processes and gathered back."""
import numpy as np
import torch
from tqdm import tqdm

from datasets.sources import eval_batches
from utils.distributed import gather_in_order, is_main_process, shard_indices
from utils.runtime import autocast


@torch.no_grad()
def extract(model, dataset, resolution, device, batch_size, amp="none", workers=2,
            rank=0, world_size=1, desc="extract"):
    """Returns numpy dict: logits float32 [N, C], features float32 [N, D], labels int64 [N]."""
    model.eval()
    indices = shard_indices(len(dataset), rank, world_size)
    logits, features, labels = [], [], []
    total = -(-len(indices) // batch_size)
    for images, batch_labels, _ in tqdm(eval_batches(dataset, resolution, device, batch_size, workers, indices),
                                        total=total, desc=desc, disable=not is_main_process(), leave=False):
        with autocast(device, amp):
            batch_logits, batch_features = model.forward_with_features(images)
        logits.append(batch_logits.float())
        features.append(batch_features.float())
        labels.append(batch_labels)
    outputs = {"logits": logits, "features": features, "labels": labels}
    result = {}
    for key, parts in outputs.items():
        local = torch.cat(parts) if parts else torch.empty(0, device=device)
        result[key] = gather_in_order(local, len(dataset), world_size).cpu().numpy()
    result["logits"] = result["logits"].astype(np.float32)
    result["features"] = result["features"].astype(np.float32)
    return result


def top1(logits, labels):
    """Fraction of images whose arg-max over the K class logits is the label."""
    return float((logits.argmax(1) == labels).mean())
