"""Whether a training run may go on from its checkpoint (docs/CONTRACTS.md §3 and §6): only with
the same run-defining flags (those train.py tags, utils/base/run_flags.py), the same classes and the
same training data; a finished run is reported, not trained again.
"""
import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from datasets.masks import read_provenance
from utils.base.checkpoint import load_checkpoint

# Checkpoints written before these flags existed trained as their defaults do now.
BEFORE_RECIPE_FLAGS = {"schedule": "bit", "warmup_steps": None, "weight_decay": 0.0, "nesterov": False,
                       "label_smoothing": 0.0, "init_from": None, "image_loss_weight": 0.0,
                       "scale_range": None}


def checkpoint_path(run_dir) -> Path:
    return Path(run_dir) / "checkpoint.pth.tar"


def final_metrics_path(run_dir) -> Path:
    return Path(run_dir) / "final_metrics.json"


def load_resume_point(ckpt_file: Path, args: argparse.Namespace, run_defining: Sequence[str]) -> dict | None:
    """The checkpoint to go on from, None for a fresh start. One made with other run-defining flags
    is refused, a finished one too (it would otherwise be reported as done)."""
    if not ckpt_file.is_file():
        return None
    resume = load_checkpoint(ckpt_file, expect_task=args.task)
    check_same_settings(resume, args, run_defining, ckpt_file)
    return resume


def is_finished(resume: dict | None) -> bool:
    return resume is not None and bool(resume.get("finished"))


def finished_run_metrics(run_dir) -> dict | None:
    """What a finished run reported (final_metrics.json), None when that file is gone."""
    path = final_metrics_path(run_dir)
    return json.loads(path.read_text()) if path.is_file() else None


def stored_settings(resume: dict) -> dict:
    """The flags a checkpoint ran with, completed for checkpoints older than a flag."""
    stored = dict(resume.get("args") or {})
    if stored and "schedule" not in stored:
        if stored.get("task") == "cls":
            stored["holdout"] = 0.0  # stored as 0.01 then, but cls runs held nothing out
        stored = {**BEFORE_RECIPE_FLAGS, **stored}
    return stored


def check_same_settings(resume: dict, args: argparse.Namespace, run_defining: Sequence[str], ckpt_file) -> None:
    """Refuse to resume with another value of a run-defining flag; a flag the checkpoint does not
    store (older than the flag) is not compared. Any other flag may change (--base_lr: printed)."""
    stored = stored_settings(resume)
    changed = [flag for flag in run_defining if flag in stored and stored[flag] != getattr(args, flag)]
    if changed:
        was = ", ".join(f"--{flag} {stored[flag]} (now {getattr(args, flag)})" for flag in changed)
        raise ValueError(f"{ckpt_file} belongs to a run with {was}; rerun with its settings to resume it, "
                         f"or start a new run with another --name")
    if "base_lr" in stored and stored["base_lr"] != args.base_lr:
        print(f"[train] resuming {ckpt_file} with --base_lr {args.base_lr} (it ran with {stored['base_lr']})")


def check_same_classes(resume: dict, classes: Sequence[str], ckpt_file, datadir) -> None:
    if resume["classes"] and list(resume["classes"]) != classes:
        raise ValueError(f"{ckpt_file} was trained on classes {resume['classes']}, but {datadir} has {classes}")


def data_fingerprint(dataset) -> dict:
    """What a resumed run must find again: the image list and, for dfb, the masks' provenance."""
    listing = hashlib.sha256()
    for path, label in dataset.samples:
        listing.update(f"{Path(path).relative_to(dataset.root)}|{label}\n".encode())
    provenance = read_provenance(dataset.mask_root) if dataset.mask_root is not None else None
    return {"images": len(dataset), "listing_sha256": listing.hexdigest(),
            "mask_provenance": provenance}


def check_same_data(resume: dict, fingerprint: dict, ckpt_file, datadir) -> None:
    stored = resume.get("data")
    if not stored or stored == fingerprint:
        return
    changed = [key for key in fingerprint if stored.get(key) != fingerprint[key]]
    detail = (f"{stored['images']} images then, {fingerprint['images']} now" if "images" in changed
              else "the same number of images, other files" if "listing_sha256" in changed
              else "the masks were made again since (provenance.json)")
    raise ValueError(f"{ckpt_file} was trained on other data than {datadir} holds now ({detail}); resume with "
                     f"the original data, or start a new run with another --name")
