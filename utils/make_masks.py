"""Stage 2 of DFB: pseudo masks of a split from the K-class classifier's CAMs.

Masks are written per the contract (docs/CONTRACTS.md §2) to <split>_mask/<class>/<stem>.png, one
file each, atomically; masks already on disk are skipped, so an interrupted run resumes.
Under torchrun the pending images are split across processes without overlap.
"""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datasets.folder import mask_path, mask_root_for
from datasets.sources import eval_batches, open_split
from utils import distributed
from utils.cam import check_scales, pseudo_masks
from utils.checkpoint import file_digest, load_network
from utils.io import remove_stale_temporaries, save_png_atomic, write_text_atomic
from utils.runtime import autocast, default_amp


def read_mask(path, size=None):
    with Image.open(path) as mask:
        if size is not None and mask.size != size:
            mask = mask.resize(size, Image.NEAREST)
        return np.array(mask, dtype=np.uint8)


def compare_with_true_masks(pseudo_paths, dataset, true_root, num_classes):
    """Pseudo-mask quality against ground-truth masks (same contract, any size: the pseudo mask
    is resized to the true mask's size with nearest neighbour)."""
    from utils.plots import mask_iou
    pseudo, true = [], []
    for pseudo_path, (image_path, _) in zip(pseudo_paths, dataset.samples):
        true_path = mask_path(true_root, image_path)
        if not true_path.is_file():
            raise FileNotFoundError(f"--true_masks: {true_path} is missing (expected one mask per image)")
        true.append(read_mask(true_path))
        pseudo.append(read_mask(pseudo_path, size=true[-1].shape[::-1]))
    scores = mask_iou(np.stack(pseudo), np.stack(true), num_classes)
    return {"foreground_iou": scores["foreground_iou"], "background_iou": scores["background_iou"],
            "images": len(true), "true_masks": str(true_root)}


PROVENANCE = "provenance.json"


def mask_provenance(args, resolution):
    """What makes the masks: the classifier's bytes and every setting of the CAM."""
    return {"classifier_sha256": file_digest(args.model_path), "labeled": bool(args.labeled),
            "scales": [float(s) for s in args.scales], "sigma": args.sigma, "threshold": args.threshold,
            "resolution": resolution}


def read_provenance(mask_root):
    """The provenance.json of a mask folder, or None when it has none (masks made elsewhere)."""
    path = Path(mask_root) / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else None


def mask_format_of(mask_root, requested=None):
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
    write_text_atomic(out_root / PROVENANCE, json.dumps(provenance, indent=2) + "\n")


def run(args):
    device, rank, world_size = distributed.init_distributed(args.device)
    main = distributed.is_main_process()
    amp = args.amp or default_amp(device)
    scales = check_scales(args.scales)
    model, checkpoint, _, _ = load_network(args.model_path, expect_task="cls", head_size=args.head_size,
                                           model_name=args.model)
    model.to(device).eval()
    resolution = args.resolution or checkpoint["resolution"] or 128

    dataset = open_split(args.dataset, resolution, classes=checkpoint["classes"] or None,
                         skip_corrupt=args.skip_corrupt)
    if len(dataset.classes) != args.head_size:
        raise ValueError(f"{args.dataset} has {len(dataset.classes)} class folders but --head_size is "
                         f"{args.head_size}; masks store folder k as value k, so they must agree")
    out_root = Path(args.out) if args.out else mask_root_for(args.dataset)
    targets = [mask_path(out_root, path) for path, _ in dataset.samples]
    if main:
        prepare_mask_folder(out_root, targets, mask_provenance(args, resolution), args.overwrite)
    distributed.barrier()
    pending = [i for i, target in enumerate(targets) if not target.is_file()]
    mine = [pending[i] for i in distributed.shard_indices(len(pending), rank, world_size)]
    if main:
        print(f"[make_cam] {len(dataset)} images in {args.dataset}; {len(dataset) - len(pending)} masks "
              f"already in {out_root}, {len(pending)} to compute; scales {list(scales)} + flips; "
              f"class = {'folder label' if args.labeled else 'prediction'}; device {device}, amp {amp}, "
              f"processes {world_size}")

    counts = torch.zeros(3, dtype=torch.float64)  # images, sum of foreground fractions, empty masks
    agree = torch.zeros(1, dtype=torch.float64)   # predicted class == folder label
    # evenly spaced over the split, so the overlays show every class (the split is sorted by class)
    shown = set(mine[::max(1, -(-len(mine) // args.overlays))][:args.overlays]) if main and args.overlays else set()
    preview = []
    with ThreadPoolExecutor(max_workers=4) as writers, torch.no_grad():
        jobs = []
        batches = eval_batches(dataset, resolution, device, args.batch, args.workers, mine)
        for images, labels, batch in tqdm(batches, total=-(-len(mine) // args.batch), desc="make_cam",
                                          disable=not main, dynamic_ncols=True):
            with autocast(device, amp):
                masks, predicted = pseudo_masks(model, images, labels if args.labeled else None, scales,
                                                args.sigma, args.threshold)
            masks = masks.cpu().numpy()
            foreground = (masks < args.head_size).reshape(len(masks), -1).mean(1)
            counts += torch.tensor([len(masks), foreground.sum(), (foreground == 0).sum()], dtype=torch.float64)
            agree += (predicted == labels).sum().item()
            for index, mask in zip(batch["index"].tolist(), masks):
                jobs.append(writers.submit(save_png_atomic, targets[index], mask))
            for row, index in enumerate(batch["index"].tolist()):
                if index in shown:
                    preview.append((batch["image"][row].permute(1, 2, 0).numpy(), masks[row], index))
        for job in jobs:
            job.result()
    if torch.distributed.is_initialized():
        for tensor in (counts, agree):
            torch.distributed.all_reduce(tensor)
    distributed.barrier()
    summary = None
    if main:
        images, foreground_sum, empty = counts.tolist()
        summary = {"split": str(args.dataset), "mask_root": str(out_root), "images_total": len(dataset),
                   "images_unreadable": len(dataset.skipped),
                   "images_computed": int(images), "images_skipped": len(dataset) - len(pending),
                   "mean_foreground_fraction": foreground_sum / images if images else None,
                   "empty_foreground": int(empty),
                   "classifier_accuracy_on_split": agree.item() / images if images else None,
                   "labeled": bool(args.labeled), "scales": list(scales), "sigma": args.sigma,
                   "threshold": args.threshold, "resolution": resolution, "model_path": str(args.model_path)}
        true_masks = None
        if args.true_masks:
            summary["against_true_masks"] = compare_with_true_masks(targets, dataset, args.true_masks, args.head_size)
            true_masks = np.stack([read_mask(mask_path(args.true_masks, dataset.samples[p[2]][0]))
                                   for p in preview]) if preview else None
            print(f"[make_cam] against the true masks in {args.true_masks}: foreground IoU "
                  f"{summary['against_true_masks']['foreground_iou']:.3f}, background IoU "
                  f"{summary['against_true_masks']['background_iou']:.3f}")
        write_text_atomic(out_root / "summary.json", json.dumps(summary, indent=2) + "\n")
        if preview:
            from utils.plots import save_mask_grid
            save_mask_grid(np.stack([p[0] for p in preview]), np.stack([p[1] for p in preview]), args.head_size,
                           out_root / "overlays.png", class_names=dataset.classes, true_masks=true_masks)
        print(f"[make_cam] computed {int(images)} masks ({summary['images_skipped']} skipped); mean foreground "
              f"fraction {summary['mean_foreground_fraction'] or 0:.3f}; {int(empty)} with empty foreground; "
              f"classifier accuracy on this split {summary['classifier_accuracy_on_split'] or 0:.4f}")
        print(f"[make_cam] wrote {out_root} (summary.json" + (", overlays.png)" if preview else ")"))
    distributed.cleanup()
    return summary
