"""Stage 2 of DFB, what `make_cam.py` runs: pseudo masks of a split from the K-class classifier's CAMs.

Masks are written per the contract (docs/CONTRACTS.md §2) to <split>_mask/<class>/<stem>.png, one
file each, atomically; masks already on disk are skipped, so an interrupted run resumes, as long as
the folder's provenance.json says they were made by the same classifier with the same run-defining
flags (make_cam.py's tagged flags). Under torchrun the pending images are split across processes
without overlap. The CAMs themselves are utils/cam/activation_maps.py.
"""
import argparse
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datasets.masks import (PROVENANCE, expected_values, invalid_values, mask_path, mask_root_for,
                            overlap_counts, overlap_scores, read_provenance, write_provenance,
                            zero_overlap_counts)
from datasets.boxes import boxes_of_samples, read_boxes
from datasets.sources import eval_batches, open_split
from models.loading import load_network
from utils.base import distributed
from utils.base.checkpoint import file_digest
from utils.base.distributed import RunContext, start_run
from utils.base.io import remove_stale_temporaries, save_png_atomic, write_text_atomic
from utils.base.run_flags import run_settings
from utils.base.runtime import autocast
from utils.cam.activation_maps import check_scales, class_activations
from utils.cam.localisation import POINTING_MAPS, centre_prior_iou, centre_prior_pointing, localisation_counts


def run(args: argparse.Namespace, run_defining: Sequence[str]) -> dict | None:
    """Write the masks of --dataset. run_defining: the flags whose values the mask folder's
    provenance.json records (make_cam.py's tagged flags). Returns summary.json's contents on the
    main process, None on the others."""
    ctx = start_run(args.device, args.amp)
    scales = check_scales(args.scales)
    model, checkpoint, _, _ = load_network(args.model_path, expect_task="cls", head_size=args.head_size,
                                           model_name=args.model)
    model.to(ctx.device).eval()
    resolution = args.resolution or checkpoint["resolution"] or 128
    settings = run_settings(args, run_defining, resolution=resolution)

    dataset = open_split_to_mask(args, resolution, checkpoint["classes"])
    out_root = Path(args.out) if args.out else mask_root_for(args.dataset)
    targets = [mask_path(out_root, path) for path, _ in dataset.samples]
    if ctx.is_main:
        prepare_mask_folder(out_root, targets, mask_provenance(args.model_path, settings), args.overwrite)
    distributed.barrier()
    pending = [i for i, target in enumerate(targets) if not target.is_file()]
    # against boxes, every image's CAM is needed (its mask is written only where it is pending)
    boxes = boxes_of_samples(dataset.samples, read_boxes(args.boxes)) if args.boxes else None
    computed = list(range(len(dataset))) if boxes else pending
    mine = [computed[i] for i in distributed.shard_indices(len(computed), ctx.rank, ctx.world_size)]
    if ctx.is_main:
        print(f"[make_cam] {len(dataset)} images in {args.dataset}; {len(dataset) - len(pending)} masks "
              f"already in {out_root}, {len(pending)} to compute; scales {list(scales)} + flips; "
              f"class = {'folder label' if args.labeled else 'prediction'}; device {ctx.device}, amp {ctx.amp}, "
              f"processes {ctx.world_size}")

    tally = write_masks(model, dataset, targets, mine, resolution, scales, args, ctx, boxes)
    distributed.barrier()
    summary = None
    if ctx.is_main:
        localisation = localisation_summary(tally, boxes, resolution) if boxes else None
        summary = write_summary(args, dataset, out_root, targets, len(dataset) - len(computed), tally, settings,
                                localisation)
    distributed.cleanup()
    return summary


def open_split_to_mask(args, resolution: int, classes: Sequence[str] | None):
    """--dataset in the classifier's class order; masks store folder k as value k, so it must have K folders."""
    dataset = open_split(args.dataset, resolution, classes=classes or None, skip_corrupt=args.skip_corrupt)
    if len(dataset.classes) != args.head_size:
        raise ValueError(f"{args.dataset} has {len(dataset.classes)} class folders but --head_size is "
                         f"{args.head_size}; masks store folder k as value k, so they must agree")
    return dataset


def mask_provenance(model_path, settings: dict) -> dict:
    """What makes the masks: the classifier's bytes and every run-defining setting of the CAM."""
    return {"classifier_sha256": file_digest(model_path), **settings}


def prepare_mask_folder(out_root, targets, provenance, overwrite):
    """Make sure every mask that will be kept comes from this classifier and these settings.

    Existing masks are reused only when the folder's provenance equals this run's (a resumed
    run); --overwrite deletes them first, so an interrupted --overwrite never mixes old and new.
    """
    stored = read_provenance(out_root)
    remove_stale_temporaries(out_root)
    existing = [target for target in targets if target.is_file()]
    if overwrite:
        for target in existing:
            target.unlink()
        existing = []
    elif existing and stored is not None and stored != provenance:
        changed = sorted(key for key in provenance if stored.get(key) != provenance.get(key))
        raise ValueError(f"{len(existing)} masks in {out_root} were made with another {', '.join(changed)} "
                         f"({PROVENANCE}); pass --overwrite to recompute them, or --out for another folder")
    elif existing and stored is None:
        print(f"[make_cam] {out_root} holds {len(existing)} masks without a {PROVENANCE}; keeping them as "
              f"they are (--overwrite recomputes them)")
        return
    write_provenance(out_root, provenance)


@dataclass
class MaskTally:
    """What this process's masks add up to: counts = (images, sum of their foreground fractions,
    masks with an empty foreground), agree = images whose predicted class is the folder label,
    preview = (image HWC, mask, dataset index) of the images shown in overlays.png, localisation =
    utils.cam.localisation.localisation_counts (of the POINTING_MAPS) summed over the images that have a box,
    grids = the (h, w) of each of those maps."""
    counts: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    agree: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.float64))
    localisation: torch.Tensor = field(default_factory=lambda: torch.zeros(2 + len(POINTING_MAPS),
                                                                           dtype=torch.float64))
    preview: list = field(default_factory=list)
    grids: list = field(default_factory=list)

    def reduce(self) -> None:
        """Sum the counts over the processes (the preview stays the main process's)."""
        if torch.distributed.is_initialized():
            for tensor in (self.counts, self.agree, self.localisation):
                torch.distributed.all_reduce(tensor)


def write_masks(model, dataset, targets, mine, resolution: int, scales, args, ctx: RunContext,
                boxes=None) -> MaskTally:
    """Compute the masks of the images `mine` (indices into dataset) and write those not yet on disk to
    `targets`, on four writer threads while the next batch is computed. boxes: per dataset image
    (box, image size) or None (datasets.boxes.boxes_of_samples); with it, the CAMs (each of POINTING_MAPS)
    and the masks are scored against the boxes."""
    tally = MaskTally()
    # evenly spaced over the split, so the overlays show every class (the split is sorted by class)
    shown = set()
    if ctx.is_main and args.overlays:
        shown = set(mine[::max(1, -(-len(mine) // args.overlays))][:args.overlays])
    with ThreadPoolExecutor(max_workers=4) as writers, torch.no_grad():
        jobs = []
        batches = eval_batches(dataset, resolution, ctx.device, args.batch, args.workers, mine)
        for images, labels, batch in tqdm(batches, total=-(-len(mine) // args.batch), desc="make_cam",
                                          disable=not ctx.is_main, dynamic_ncols=True):
            with autocast(ctx.device, ctx.amp):
                found = class_activations(model, images, labels if args.labeled else None, scales, args.sigma,
                                          args.threshold, keep_raw=boxes is not None)
            masks, predicted = found.masks, found.predicted
            if boxes is not None:
                pointing_maps = [found.raw, found.multiscale, found.blurred]
                tally.grids = [tuple(maps.shape[-2:]) for maps in pointing_maps]
                tally.localisation += score_against_boxes(pointing_maps, masks < args.head_size, batch["index"], boxes)
            masks = masks.cpu().numpy()
            foreground = (masks < args.head_size).reshape(len(masks), -1).mean(1)
            tally.counts += torch.tensor([len(masks), foreground.sum(), (foreground == 0).sum()], dtype=torch.float64)
            tally.agree += (predicted == labels).sum().item()
            for index, mask in zip(batch["index"].tolist(), masks):
                if not targets[index].is_file():
                    jobs.append(writers.submit(save_png_atomic, targets[index], mask))
            for row, index in enumerate(batch["index"].tolist()):
                if index in shown:
                    tally.preview.append((batch["image"][row].permute(1, 2, 0).numpy(), masks[row], index))
        for job in jobs:
            job.result()
    tally.reduce()
    return tally


def score_against_boxes(pointing_maps, foreground, indices, boxes) -> torch.Tensor:
    """localisation_counts of the images of a batch that have a box; pointing_maps: the batch's maps in
    POINTING_MAPS' order."""
    rows = [row for row, index in enumerate(indices.tolist()) if boxes[index] is not None]
    if not rows:
        return torch.zeros(2 + len(POINTING_MAPS), dtype=torch.float64)
    known = [boxes[index] for index in indices[rows].tolist()]
    return localisation_counts([maps[rows].float().cpu() for maps in pointing_maps], foreground[rows].cpu(),
                               torch.tensor([box for box, _ in known]), torch.tensor([size for _, size in known]))


def localisation_summary(tally: MaskTally, boxes, resolution: int) -> dict:
    """Pointing accuracy of each of the POINTING_MAPS and the mean mask-box IoU, beside those of the centre
    prior (its pointing on each map's own grid); the maps' descriptions go with them (pointing_maps)."""
    known = [entry for entry in boxes if entry is not None]
    scored, *hits, iou_sum = tally.localisation.tolist()
    if not known:
        raise ValueError("--boxes: no image of the split has a box in that file (rows are matched by file name)")
    known_boxes, known_sizes = torch.tensor([box for box, _ in known]), torch.tensor([size for _, size in known])
    return {"images_with_box": int(scored), "images_without_box": len(boxes) - len(known),
            "pointing_accuracy": {name: count / scored for name, count in zip(POINTING_MAPS, hits)},
            "pointing_maps": dict(POINTING_MAPS),
            "map_sizes": {name: list(grid) for name, grid in zip(POINTING_MAPS, tally.grids)},
            "mask_box_iou": iou_sum / scored,
            "centre_prior_pointing_accuracy": {name: centre_prior_pointing(known_boxes, known_sizes, grid)
                                               for name, grid in zip(POINTING_MAPS, tally.grids)},
            "centre_prior_box_iou": centre_prior_iou(known_boxes, known_sizes, resolution, resolution)}


def write_summary(args, dataset, out_root: Path, targets, skipped: int, tally: MaskTally, settings: dict,
                  localisation: dict | None = None) -> dict:
    """summary.json (with --true_masks, the masks' IoU against them; with --boxes, the CAMs against the
    boxes) and overlays.png; printed too."""
    images, foreground_sum, empty = tally.counts.tolist()
    summary = {"split": str(args.dataset), "mask_root": str(out_root), "images_total": len(dataset),
               "images_unreadable": len(dataset.skipped),
               "images_computed": int(images), "images_skipped": skipped,
               "mean_foreground_fraction": foreground_sum / images if images else None,
               "empty_foreground": int(empty),
               "classifier_accuracy_on_split": tally.agree.item() / images if images else None,
               **settings, "model_path": str(args.model_path)}
    true_masks = None
    if args.true_masks:
        summary["against_true_masks"] = compare_with_true_masks(targets, dataset, args.true_masks, args.head_size)
        true_masks = np.stack([read_mask(mask_path(args.true_masks, dataset.samples[p[2]][0]))
                               for p in tally.preview]) if tally.preview else None
        print(f"[make_cam] against the true masks in {args.true_masks}: foreground IoU "
              f"{summary['against_true_masks']['foreground_iou']:.3f}, background IoU "
              f"{summary['against_true_masks']['background_iou']:.3f}")
    if localisation:
        summary["against_boxes"] = {**localisation, "boxes": str(args.boxes)}
        prior = localisation["centre_prior_pointing_accuracy"]
        pointing = ", ".join(f"{name} {value:.3f} (centre prior {prior[name]:.3f})"
                             for name, value in localisation["pointing_accuracy"].items())
        print(f"[make_cam] against the boxes of {args.boxes} ({localisation['images_with_box']} images): pointing "
              f"accuracy of the peak of the {pointing}; mask-box IoU {localisation['mask_box_iou']:.3f} "
              f"(centre prior {localisation['centre_prior_box_iou']:.3f})")
    write_text_atomic(out_root / "summary.json", json.dumps(summary, indent=2) + "\n")
    if tally.preview:
        from utils.figures.plots import save_mask_grid
        preview = tally.preview
        save_mask_grid(np.stack([p[0] for p in preview]), np.stack([p[1] for p in preview]), args.head_size,
                       out_root / "overlays.png", class_names=dataset.classes, true_masks=true_masks)
    print(f"[make_cam] computed {int(images)} masks ({skipped} skipped); mean foreground "
          f"fraction {summary['mean_foreground_fraction'] or 0:.3f}; {int(empty)} with empty foreground; "
          f"classifier accuracy on this split {summary['classifier_accuracy_on_split'] or 0:.4f}")
    print(f"[make_cam] wrote {out_root} (summary.json" + (", overlays.png)" if tally.preview else ")"))
    return summary


def read_mask(path, size=None):
    with Image.open(path) as mask:
        if size is not None and mask.size != size:
            mask = mask.resize(size, Image.NEAREST)
        return np.array(mask, dtype=np.uint8)


def _read_checked_mask(path, num_classes, size=None):
    """read_mask, refusing a file that is not a mask under the contract (one channel, values 0..K or 255)."""
    values = read_mask(path, size)
    if values.ndim != 2:
        raise ValueError(f"mask {path} has {values.shape[-1]} channels; expected one 8-bit channel")
    bad = invalid_values(values, num_classes)
    if bad.any():
        raise ValueError(f"mask {path} holds value {int(values[bad][0])}; expected {expected_values(num_classes)}")
    return values


def compare_with_true_masks(pseudo_paths, dataset, true_root, num_classes):
    """Pseudo-mask quality against ground-truth masks (same contract, any size: the pseudo mask
    is resized to the true mask's size with nearest neighbour), by the rule of
    datasets.masks.overlap_scores."""
    counts, images = zero_overlap_counts(num_classes), 0
    for pseudo_path, (image_path, _) in zip(pseudo_paths, dataset.samples):
        true_path = mask_path(true_root, image_path)
        if not true_path.is_file():
            raise FileNotFoundError(f"--true_masks: {true_path} is missing (expected one mask per image)")
        true = _read_checked_mask(true_path, num_classes)
        pseudo = _read_checked_mask(pseudo_path, num_classes, size=true.shape[::-1])
        counts += overlap_counts(torch.from_numpy(pseudo), torch.from_numpy(true), num_classes)
        images += 1
    scores = overlap_scores(counts, num_classes)
    return {"foreground_iou": scores["foreground_iou"], "background_iou": scores["background_iou"],
            "images": images, "true_masks": str(true_root)}
