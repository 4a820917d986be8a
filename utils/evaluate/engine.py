"""Batched inference: image-level logits and pooled features of a whole split, in dataset
order, sharded across torchrun processes and gathered back; with test-time augmentation,
through `with_tta`'s wrapper."""
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets.sources import eval_batches
from utils.base.distributed import gather_in_order, is_main_process, shard_indices
from utils.base.runtime import autocast
from utils.evaluate.tta import TTA_MODES
from utils.ood.scores import odin_perturb


class FlipAveraged(torch.nn.Module):
    """A network whose logits and pooled features are the means over the image and its mirror
    (flip test-time augmentation: two forwards per image). The head is affine, so the averaged
    features still map to the averaged logits through the network's head_parameters()."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.head_size, self.feature_dim = model.head_size, model.feature_dim

    def forward_with_features(self, images):
        logits, features = self.model.forward_with_features(images)
        mirrored_logits, mirrored_features = self.model.forward_with_features(images.flip(-1))
        return (logits + mirrored_logits) / 2, (features + mirrored_features) / 2

    def forward(self, images):
        # differentiable, so ODIN's input perturbation follows the averaged logits
        return self.forward_with_features(images)[0]


class FlipTranslateAveraged(FlipAveraged):
    """airbench94's test-time augmentation (its tta_level 2; six forwards per image): half the flip
    average of the image, plus half the mean of the flip averages of its two diagonal translations by
    one pixel (crops of the image reflection-padded by 1 px at offsets (0, 0) and (2, 2)). The
    weights sum to 1, so the averaged features still map to the averaged logits through the head."""

    def forward_with_features(self, images):
        height, width = images.shape[-2:]
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        views = (images, padded[..., :height, :width], padded[..., 2:, 2:])
        outputs = [super(FlipTranslateAveraged, self).forward_with_features(view) for view in views]
        return tuple(0.5 * centre + 0.25 * (first + second) for centre, first, second in zip(*outputs))


TTA_WRAPPERS = {"flip": FlipAveraged, "flip_translate": FlipTranslateAveraged}


def with_tta(model, tta):
    """The network whose image-level outputs eval.py and score.py read: `model` itself ('none'), its
    flip average ('flip') or airbench's multi-crop average ('flip_translate')."""
    if tta not in TTA_MODES:
        raise ValueError(f"test-time augmentation {tta!r}: expected one of {', '.join(TTA_MODES)}")
    return TTA_WRAPPERS[tta](model) if tta in TTA_WRAPPERS else model


@torch.no_grad()
def extract(model, dataset, resolution, device, batch_size, amp="none", workers=2,
            rank=0, world_size=1, desc="extract", odin=None):
    """Returns numpy dict: logits float32 [N, C], features float32 [N, D], labels int64 [N].

    odin = (temperature, epsilon, K): also `odin_logits` [N, K], the K first logits of the
    ODIN-perturbed images (epsilon in the units of the normalised inputs; computed in float32,
    since only the sign of a gradient through a softmax at T = 1000 matters).
    """
    model.eval()
    indices = shard_indices(len(dataset), rank, world_size)
    logits, features, labels, odin_logits = [], [], [], []
    total = -(-len(indices) // batch_size)
    for images, batch_labels, _ in tqdm(eval_batches(dataset, resolution, device, batch_size, workers, indices),
                                        total=total, desc=desc, disable=not is_main_process(), leave=False):
        with autocast(device, amp):
            batch_logits, batch_features = model.forward_with_features(images)
        logits.append(batch_logits.float())
        features.append(batch_features.float())
        labels.append(batch_labels)
        if odin is not None:
            temperature, epsilon, num_classes = odin
            def foreground(x):
                return model(x)[:, :num_classes]
            perturbed = odin_perturb(foreground, images, temperature, epsilon)
            odin_logits.append(foreground(perturbed).float())
    outputs = {"logits": logits, "features": features, "labels": labels}
    if odin is not None:
        outputs["odin_logits"] = odin_logits
    # a process whose shard is empty (fewer images than processes) still joins the gather
    empty_shapes = {"logits": (0, model.head_size), "features": (0, model.feature_dim), "labels": (0,),
                    "odin_logits": (0, odin[2] if odin else 0)}
    result = {}
    for key, parts in outputs.items():
        local = torch.cat(parts) if parts else torch.empty(
            empty_shapes[key], device=device, dtype=torch.int64 if key == "labels" else torch.float32)
        result[key] = gather_in_order(local, len(dataset), world_size).cpu().numpy()
    for key in ("logits", "features", "odin_logits"):
        if key in result:
            result[key] = result[key].astype(np.float32)
    return result


def top1(logits, labels):
    """Fraction of images whose arg-max over the K class logits is the label."""
    return float((logits.argmax(1) == labels).mean())
