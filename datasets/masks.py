"""The mask contract (docs/CONTRACTS.md §2) in one place: mask values, where mask files live,
the provenance of a mask folder, and how two sets of masks are compared.

A mask is uint8 [H, W]: value k < K = foreground of class k, K = background, IGNORE_INDEX = ignore.
make_cam.py writes masks, train.py reads them and scores the dense network against them, and
make_cam.py --true_masks scores pseudo masks against true ones; all of them use this module.
"""
import json
from pathlib import Path

import torch

from utils.base.io import write_text_atomic

IGNORE_INDEX = 255  # pixels that count for no class and no loss (neither an ID class nor background)
# K classes need the values 0..K (K = background) besides IGNORE_INDEX in a uint8 mask
MAX_CLASSES = IGNORE_INDEX - 1
# how the values of a mask file are read: ours is the contract (k = class k, K = background);
# official is the original release's (0 = background, k + 1 = class k); IGNORE_INDEX is ignore in both
MASK_FORMATS = ("ours", "official")
PROVENANCE = "provenance.json"


def invalid_values(masks, num_classes: int):
    """Boolean array / tensor (as `masks`, numpy or torch): where a value is neither a class
    0..K-1, the background K nor IGNORE_INDEX. Both mask formats use exactly these values."""
    return (masks < 0) | ((masks > num_classes) & (masks != IGNORE_INDEX))


def expected_values(num_classes: int, mask_format: str = "ours") -> str:
    """The values a mask file of `mask_format` may hold, as error messages state them."""
    if mask_format == "official":
        return (f"0 (background), 1..{num_classes} (class + 1; --mask_format official) "
                f"or {IGNORE_INDEX} (ignore)")
    return f"0..{num_classes - 1} (foreground class), {num_classes} (background) or {IGNORE_INDEX} (ignore)"


def named_path(path) -> Path:
    """`path` with a real last component ('.' or '..' resolved), so that .name / .parent mean folders
    (the mask folder beside a split and the dataset names of docs/CONTRACTS.md §1 are built from them)."""
    path = Path(path)
    return path.resolve() if path.name in ("", ".", "..") else path


def mask_root_for(split_root) -> Path:
    """dataset/<name>/<split> -> dataset/<name>/<split>_mask."""
    split_root = named_path(split_root)
    return split_root.parent / f"{split_root.name}_mask"


def mask_path(mask_root, image_path) -> Path:
    """<mask_root>/<class folder of the image>/<image stem>.png."""
    image_path = Path(image_path)
    return Path(mask_root) / image_path.parent.name / f"{image_path.stem}.png"


def read_provenance(mask_root) -> dict | None:
    """The provenance.json of a mask folder, or None when it has none (masks made elsewhere)."""
    path = Path(mask_root) / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else None


def write_provenance(mask_root, provenance: dict) -> None:
    """Atomically: a reader never finds half a provenance.json (it would refuse or misjudge the masks)."""
    write_text_atomic(Path(mask_root) / PROVENANCE, json.dumps(provenance, indent=2) + "\n")


def mask_format_of(mask_root, requested: str | None = None) -> str:
    """How train.py must read the masks of `mask_root`: 'ours' for a folder this make_cam.py
    wrote (it has a provenance.json), else what --mask_format says; without it a folder of
    unknown origin is refused, since the release's masks (background 0) would be read silently
    as class 0 everywhere."""
    if read_provenance(mask_root) is not None:
        if requested == "official":
            raise ValueError(f"--mask_format official, but {mask_root} holds a {PROVENANCE} of this "
                             f"make_cam.py, whose masks are in our format; drop --mask_format or pass "
                             f"--mask_format ours")
        return "ours"
    if requested is None:
        raise ValueError(f"masks in {mask_root} have no {PROVENANCE} (not written by this make_cam.py); say "
                         f"how to read them: --mask_format official (the original release: 0 background, "
                         f"class k as k+1) or --mask_format ours (class k as k, background K)")
    return requested


def overlap_counts(pred: torch.Tensor, true: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixel counts of predicted against true masks (integer tensors of one shape, values per the
    contract), int64 [2K + 5] on their device. Counts of several batches (and processes) add up;
    `overlap_scores` turns the sum into scores.

    Only pixels valid in both masks (neither holds IGNORE_INDEX) count. Layout: [valid pixels,
    foreground intersection, foreground union, intersection of value 0..K, union of value 0..K],
    where foreground is any class k < K and value K the background. Runs without a host sync.
    """
    if pred.shape != true.shape:
        raise ValueError(f"predicted masks {tuple(pred.shape)} and true masks {tuple(true.shape)} "
                         f"must have the same shape")
    valid = (pred != IGNORE_INDEX) & (true != IGNORE_INDEX)
    pred_fg, true_fg = (pred < num_classes) & valid, (true < num_classes) & valid
    summary = torch.stack([valid.sum(), (pred_fg & true_fg).sum(), (pred_fg | true_fg).sum()])

    def per_value(where, values):
        # pixels outside `where` go to the extra last bin, which is dropped; so do values beyond K, which
        # the contract rules out (callers reading files check them), rather than index out of range
        bins = torch.where(where & (values <= num_classes), values.long(), num_classes + 1).flatten()
        counts = torch.zeros(num_classes + 2, dtype=torch.int64, device=bins.device)
        return counts.scatter_add_(0, bins, torch.ones_like(bins))[:num_classes + 1]

    intersection = per_value(valid & (pred == true), true)
    union = per_value(valid, pred) + per_value(valid, true) - intersection
    return torch.cat([summary, intersection, union])


def zero_overlap_counts(num_classes: int, device=None) -> torch.Tensor:
    """The `overlap_counts` of no pixel: where a sum starts (a process without images adds nothing)."""
    return torch.zeros(2 * num_classes + 5, dtype=torch.int64, device=device)


def _ratio(part, whole):
    return part / whole if whole else float("nan")


def overlap_scores(counts: torch.Tensor, num_classes: int) -> dict:
    """Summed `overlap_counts` -> {pixel_accuracy, foreground_iou, background_iou, per_class}.

    pixel_accuracy: pixels with the same value in both masks / valid pixels. foreground_iou treats
    every class k < K as one foreground; background_iou is the IoU of the value K; per_class maps
    each class present in either mask to the IoU of value k. A ratio over no pixel (no valid pixel,
    an empty union) is NaN: there is nothing to score, which is neither a failure (0) nor a match (1).
    """
    counts = counts.tolist()
    valid, fg_intersection, fg_union = counts[:3]
    intersection, union = counts[3:num_classes + 4], counts[num_classes + 4:]
    return {"pixel_accuracy": _ratio(sum(intersection), valid),
            "foreground_iou": _ratio(fg_intersection, fg_union),
            "background_iou": _ratio(intersection[num_classes], union[num_classes]),
            "per_class": {k: _ratio(intersection[k], union[k]) for k in range(num_classes) if union[k]}}
