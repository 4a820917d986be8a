"""Checkpoints per docs/CONTRACTS.md §3: a dict with `model`, `optim`, `step`, the run's `args`, and
what the network is (`task`, `model_name`, `head_size`, `num_classes`, `classes`,
`resolution`, `half_stride`), so a run can resume and any stage can check it was given the right file;
`data` fingerprints the training images (and masks), so a resumed run refuses changed data.
The network of a checkpoint is built by models/loading.py; this module knows files, not networks.
"""
import hashlib
from pathlib import Path

import torch

from utils.base.io import torch_save_atomic

TASKS = ("cls", "dfb")


def save_checkpoint(path, *, model_state, optim_state, step, args, task, model_name, classes,
                    resolution, finished=False, data=None, half_stride=False, holdout_samples=(), ema_state=None):
    num_classes = len(classes)
    extra = {"ema": ema_state} if ema_state is not None else {}  # the weight average of --ema_decay
    torch_save_atomic({
        "model": model_state,
        "optim": optim_state,
        "step": step,
        "args": dict(args),
        "task": task,
        "model_name": model_name,
        "num_classes": num_classes,
        "head_size": num_classes + (1 if task == "dfb" else 0),
        "classes": list(classes),
        "resolution": resolution,
        "half_stride": bool(half_stride),
        "finished": finished,
        "data": data,
        "holdout_samples": list(holdout_samples),  # training images never trained on (paths under the split)
        **extra,
    }, path)


def load_checkpoint(path, expect_task=None):
    """Load a checkpoint on the CPU. Files of the original BiT/DFB release (`model` with a
    'module.' prefix, maybe `step` / `optim`, or a bare state dict) are accepted with task and
    head size unknown (None) and `official` True; `half_stride` is False unless stored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # not a torch file, or truncated
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (torch.load: {reason}); expected a "
                         f"file written by train.py") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} is not a dict (got {type(checkpoint).__name__})")
    if "model" not in checkpoint:
        if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            checkpoint = {"model": checkpoint}
        else:
            raise ValueError(f"checkpoint {path} has no 'model' entry (keys: {sorted(checkpoint)[:8]})")
    # train.py always stores the task; the release's train.py never does
    checkpoint["official"] = "task" not in checkpoint
    for key in ("task", "model_name", "head_size", "num_classes", "classes", "resolution", "step", "data"):
        checkpoint.setdefault(key, None)
    checkpoint.setdefault("half_stride", False)
    if checkpoint["task"] not in (None, *TASKS):
        raise ValueError(f"checkpoint {path} has task {checkpoint['task']!r}; expected one of {TASKS}")
    if expect_task and checkpoint["task"] not in (None, expect_task):
        raise ValueError(f"checkpoint {path} is a '{checkpoint['task']}' checkpoint, "
                         f"but this stage needs a '{expect_task}' checkpoint")
    return checkpoint


def file_digest(path, chunk=1 << 22):
    """sha256 of a file's bytes (cache keys: a new checkpoint never reuses old features)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
