"""Stages 1 and 3 of DFB, what `train.py` runs: the K-class classifier (--task cls) or the
(K+1)-class dense network (--task dfb) of the run <logdir>/<name>/.

`run` reads top to bottom: the run context, the resume point (utils/train/resume.py decides whether the
run folder's checkpoint may be resumed), data, schedule, network, batches, then the loop of
utils/train/engine.py with the evaluations and checkpoints it calls, then the final metrics.
"""
import argparse
import json
import shutil
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from datasets.folder import decode_all, find_classes
from datasets.masks import IGNORE_INDEX, MAX_CLASSES, mask_format_of, mask_root_for
from datasets.sources import (GlobalBatchIndices, InMemoryBatches, LoaderBatches,
                              decoded_size, open_split, relative_paths, restrict)
from datasets.transforms import default_train_size, normalize
from models.resnetv2 import KNOWN_MODELS, create_model, load_state_dict_checked, patch_whitening_filters
from utils.base import distributed
from utils.base.checkpoint import file_digest, load_checkpoint, save_checkpoint
from utils.base.distributed import RunContext, start_run
from utils.base.io import atomic_path, remove_stale_temporaries_of, write_text_atomic
from utils.base.runtime import seed_everything
from utils.evaluate.dense import evaluate_masks
from utils.evaluate.engine import extract, top1
from utils.train.engine import DenseLogits, TrainLoopConfig, train_loop
from utils.train.resume import (check_same_classes, check_same_data, checkpoint_path, data_fingerprint,
                                final_metrics_path, finished_run_metrics, is_finished, load_resume_point)
from utils.train.schedule import LR_RULES, get_mixup, get_schedule, scale_schedule, with_warmup
from utils.train.weight_average import Lookahead, WeightAverage

BIT_URL = "https://storage.googleapis.com/bit_models/{name}.npz"


def run(args: argparse.Namespace, run_defining: Sequence[str]) -> dict | None:
    """Train (or resume) the run of `args`. run_defining: the flags a resumed run must share with
    its checkpoint (train.py's tagged flags). Returns the final metrics (those of an earlier
    invocation for a finished run), None when --stop_after left the run unfinished."""
    check_model_name(args.model)
    ctx = start_run(args.device, args.amp)
    run_dir = Path(args.logdir) / args.name
    ckpt_file = checkpoint_path(run_dir)
    remove_interrupted_saves(ckpt_file, args.export, ctx)
    resume = load_resume_point(ckpt_file, args, run_defining)
    if is_finished(resume):
        return leave_finished_run(args, run_dir, ckpt_file, ctx)
    start_step = resume["step"] if resume else 0
    seed_everything(args.seed + ctx.rank)

    data = open_training_data(args, resume, ckpt_file)
    schedule, mixup_alpha = plan_schedule(args, len(data.train_indices))
    model, net, optimizer = build_training(args, data.classes, resume, ckpt_file, ctx)
    if resume is None and not args.init_from and model.root_is_whitening():
        whiten_stem(model, data, args, ctx)
    average = weight_average(args, model, schedule[-1], resume)
    batches, in_memory = build_batches(args, data, start_step, ctx)
    writer = open_log(run_dir, ctx)
    if ctx.is_main:
        describe_run(args, data, model.head_size, schedule, mixup_alpha, in_memory, start_step,
                     ckpt_file if resume is not None else None, ctx)
    evaluate = Evaluator.open(args, ctx, model, writer, data)
    save = CheckpointSaver(args, ctx, ckpt_file, model, optimizer, data, average)

    started = time.perf_counter()
    done = train_loop(loop_config(args, data, schedule, mixup_alpha, start_step), ctx, net=net, optimizer=optimizer,
                      batches=batches, writer=writer, on_checkpoint=save, on_evaluate=evaluate,
                      show_progress=ctx.is_main, weight_average=average)
    if done < schedule[-1]:
        return leave_unfinished_run(done, schedule[-1], save, ckpt_file, ctx)
    return finish_run(args, run_dir, ckpt_file, ctx, evaluate, save, writer, schedule[-1], started, average)


# --- before the data: the model name, a killed run's leftovers, a finished run ---

def check_model_name(name: str) -> None:
    if name not in KNOWN_MODELS:
        raise ValueError(f"--model {name!r} is unknown; known models: {', '.join(KNOWN_MODELS)}")


def remove_interrupted_saves(ckpt_file: Path, export_path, ctx: RunContext) -> None:
    """What a killed run was saving is incomplete: delete it (main process) before anyone reads."""
    if ctx.is_main:
        for target in (ckpt_file, export_path):
            if target and remove_stale_temporaries_of(target):
                print(f"[train] removed the unfinished temporary files of {target} left by an interrupted run")
    distributed.barrier()


def leave_finished_run(args, run_dir: Path, ckpt_file: Path, ctx: RunContext) -> dict | None:
    if ctx.is_main:
        print(f"[train] {ckpt_file} is a finished run; nothing to do (delete it or choose another --name)")
    export(args, ckpt_file, ctx.is_main)
    distributed.cleanup()
    return finished_run_metrics(run_dir)


# --- data and schedule ---

@dataclass
class TrainingData:
    """The training split of a run and the images held out of it."""
    classes: list[str]
    dataset: torch.utils.data.Dataset  # the whole split (with its masks for dfb)
    fingerprint: dict  # utils.train.resume.data_fingerprint, stored in every checkpoint
    train_indices: np.ndarray
    holdout_indices: np.ndarray
    holdout_samples: list[str]  # the held-out images as paths under the split root, stored in the checkpoint
    train_size: int  # images are resized (or with --train_pad padded) to this, then randomly cropped to --resolution


def open_training_data(args, resume: dict | None, ckpt_file: Path) -> TrainingData:
    """The split of --datadir (a resumed run must find the same classes and files) and its holdout."""
    classes = find_classes(args.datadir)
    if resume is not None:
        check_same_classes(resume, classes, ckpt_file, args.datadir)
    mask_root, mask_format = find_masks(args, len(classes))
    train_size = (args.resolution + 2 * args.train_pad if args.train_pad
                  else args.train_resize or default_train_size(args.resolution))
    dataset = open_split(args.datadir, args.resolution, with_masks=args.task == "dfb", mask_root=mask_root,
                         num_classes=len(classes), train_size=args.resolution if args.train_pad else train_size,
                         skip_corrupt=args.skip_corrupt)
    if mask_format is not None:
        dataset = dataset.reading_masks_as(mask_format)
    fingerprint = data_fingerprint(dataset)
    if resume is not None:
        check_same_data(resume, fingerprint, ckpt_file, args.datadir)
    relative = relative_paths(dataset)
    inherited = inherited_holdout(args, relative)
    if inherited is not None:
        holdout_indices = inherited
        train_indices = np.setdiff1d(np.arange(len(dataset)), holdout_indices)
    else:
        train_indices, holdout_indices = holdout_split(len(dataset), args.holdout, args.seed)
    holdout_samples = [relative[i] for i in holdout_indices]
    return TrainingData(classes, dataset, fingerprint, train_indices, holdout_indices, holdout_samples, train_size)


def find_masks(args, num_classes: int) -> tuple[Path | None, str | None]:
    """(mask folder, how to read it) of a dfb run; (None, None) for cls."""
    if args.task != "dfb":
        return None, None
    if num_classes > MAX_CLASSES:
        raise ValueError(f"masks are uint8 with {IGNORE_INDEX} = ignore: at most {MAX_CLASSES} classes, "
                         f"{args.datadir} has {num_classes}")
    mask_root = Path(args.mask_dir) if args.mask_dir else mask_root_for(args.datadir)
    if not mask_root.is_dir():
        raise FileNotFoundError(
            f"pseudo masks {mask_root} not found: write them first with `python make_cam.py "
            f"--dataset={args.datadir} --model_path=cls_pretrained_models/<dataset>.pth.tar "
            f"--head_size={num_classes}` (or pass --mask_dir)")
    return mask_root, mask_format_of(mask_root, args.mask_format)


def inherited_holdout(args, relative_paths: list[str]) -> np.ndarray | None:
    """dfb --init_from: the classifier's held-out images (sorted indices into the split), so that
    the dense network's val metrics and eval.py's fusion choice use images that neither network
    ever trained on (a holdout of its own would hold out images the classifier learnt). None when
    there is no --init_from or the classifier held nothing out (then --holdout applies)."""
    if args.task != "dfb" or not args.init_from:
        return None
    held_out = set(load_checkpoint(args.init_from, expect_task="cls").get("holdout_samples") or ())
    if not held_out:
        print(f"[train] --init_from {args.init_from} held no images out: holding out --holdout {args.holdout} "
              f"of the split, some of which the classifier trained on")
        return None
    indices = np.array([i for i, path in enumerate(relative_paths) if path in held_out], dtype=np.int64)
    if len(indices) < len(held_out):
        raise ValueError(f"--init_from {args.init_from} held out {len(held_out)} images, of which only {len(indices)} "
                         f"are in --datadir {args.datadir}: train the dense network on the classifier's split")
    print(f"[train] holding out the {len(indices)} images that --init_from {args.init_from} held out "
          f"(--holdout {args.holdout} is not used)")
    return indices


def holdout_split(num_items, fraction, seed):
    """Deterministic split of the training set: (train indices, held-out indices)."""
    count = int(round(num_items * fraction))
    order = np.random.default_rng(seed).permutation(num_items)
    return np.sort(order[count:]), np.sort(order[:count])


def plan_schedule(args, train_images: int) -> tuple[list[int], float]:
    """(schedule, MixUp alpha): BiT HyperRule for the number of training images, scaled to --steps."""
    schedule = get_schedule(train_images)
    if args.steps:
        schedule = scale_schedule(schedule, args.steps)
    schedule = with_warmup(schedule, args.warmup_steps, args.schedule)
    mixup_alpha = (get_mixup(train_images) if args.mixup is None else args.mixup) if args.task == "cls" else 0.0
    return schedule, mixup_alpha


def loop_config(args, data: TrainingData, schedule, mixup_alpha: float, start_step: int) -> TrainLoopConfig:
    return TrainLoopConfig(task=args.task, num_classes=len(data.classes), schedule=schedule, base_lr=args.base_lr,
                           start_step=start_step, mixup_alpha=mixup_alpha, seed=args.seed,
                           lr_rule=LR_RULES[args.schedule], label_smoothing=args.label_smoothing,
                           image_loss_weight=args.image_loss_weight, checkpoint_every=args.save_every,
                           eval_every=args.eval_every,
                           stop_at=start_step + args.stop_after if args.stop_after else None)


# --- network and optimizer ---

def build_training(args, classes: Sequence[str], resume: dict | None, ckpt_file: Path, ctx: RunContext):
    """(model, the module the loop trains, optimizer): the network on the device, wrapped for the
    dense loss, DDP and torch.compile as asked; SGD with the resumed state."""
    head_size = len(classes) + (1 if args.task == "dfb" else 0)
    model = build_model(args, head_size, resume, ckpt_file, classes).to(ctx.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    net = DenseLogits(model) if args.task == "dfb" else model
    if ctx.world_size > 1:
        net = DistributedDataParallel(net, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    optimizer = torch.optim.SGD(parameter_groups(model, args.weight_decay), lr=args.base_lr, momentum=0.9,
                                nesterov=args.nesterov)
    if resume is not None and resume.get("optim"):
        optimizer.load_state_dict(resume["optim"])
    return model, net, optimizer


def pretrained_path(args):
    if args.pretrained and args.pretrained.lower() == "none":
        return None
    return Path(args.pretrained or f"pretrained/{args.model}.npz")


def check_pretrained(args):
    path = pretrained_path(args)
    if path is not None and args.pretrained is None and not KNOWN_MODELS[args.model].has_pretrained_weights:
        raise ValueError(f"--model {args.model} has no pretrained weights: pass --pretrained none")
    if path is not None and not path.is_file():
        url = BIT_URL.format(name=args.model)
        raise FileNotFoundError(
            f"BiT weights {path} not found: download them with `mkdir -p {path.parent} && wget -O {path} {url}`, "
            f"or pass --pretrained PATH, or --pretrained none to train from scratch")
    if path is not None and not zipfile.is_zipfile(path):
        raise ValueError(f"--pretrained {path} is not a BiT .npz archive (expected the file from {BIT_URL})")
    return path


def build_model(args, head_size, resume, ckpt_file, classes=None):
    """The network with a zero head: the resumed weights, else the --init_from classifier's, else
    BiT's (unless --pretrained none)."""
    model = create_model(args.model, head_size=head_size, zero_head=True, half_stride=args.half_stride)
    if resume is not None:
        load_state_dict_checked(model, resume["model"], str(ckpt_file))
    elif args.init_from:
        init_from_classifier(model, args.init_from, classes)
    else:
        weights = check_pretrained(args)
        if weights is not None:
            model.load_from_npz(str(weights), load_head=False)
    return model


def weight_average(args, model, total_steps: int, resume: dict | None) -> WeightAverage | None:
    """--ema_decay's moving average or --lookahead's slow weights (resumed from the checkpoint), or None."""
    state = (resume or {}).get("ema")
    if args.lookahead:
        return Lookahead(model, total_steps, state)
    return WeightAverage(model, args.ema_decay, state) if args.ema_decay else None


WHITENING_IMAGES = 5000  # airbench's count


def whiten_stem(model, data: TrainingData, args, ctx: RunContext) -> None:
    """Set a whitening stem's filters (models.resnetv2.patch_whitening_filters) from up to 5,000 training
    images drawn with --seed (never held-out ones), as the network sees them. Every process draws the same
    images, so the processes of a torchrun start from the same filters."""
    count = min(WHITENING_IMAGES, len(data.train_indices))
    chosen = np.sort(np.random.default_rng(args.seed).choice(data.train_indices, count, replace=False))
    images = decode_all(restrict(data.dataset, chosen), workers=args.workers, progress=ctx.is_main,
                        desc="whitening patches")["images"]
    with torch.no_grad():
        model.root.conv.weight.copy_(patch_whitening_filters(normalize(images)))
    if ctx.is_main:
        print(f"[train] stem: whitening filters of the 3x3 patches of {count} training images")


def initialisation(args) -> dict:
    """Where the weights started, with the file's sha256 (so a pretrained npz reused by later runs is
    identified): {'from': 'classifier' | 'npz' | 'scratch', 'path', 'sha256'}."""
    source = Path(args.init_from) if args.init_from else pretrained_path(args)
    if source is None:
        return {"from": "scratch"}
    return {"from": "classifier" if args.init_from else "npz", "path": str(source), "sha256": file_digest(source)}


def init_from_classifier(model, path, classes):
    """Copy a trained K-class classifier into the (K+1)-class dense network: the body and head rows
    0..K-1; the background row K keeps the zero of the zero-initialised head, so at step 0 the
    foreground logits are the classifier's and the background logit is 0."""
    source = f"--init_from {path}"
    checkpoint = load_checkpoint(path, expect_task="cls")
    if checkpoint["model_name"] and checkpoint["model_name"] != model.model_name:
        raise ValueError(f"{source} is a {checkpoint['model_name']} classifier, but --model is {model.model_name}")
    if checkpoint["classes"] and list(checkpoint["classes"]) != list(classes):
        raise ValueError(f"{source} was trained on classes {checkpoint['classes']}, but the training split has {classes}")
    state = {key.removeprefix("module."): value for key, value in checkpoint["model"].items()}
    num_classes = model.head_size - 1
    stored = state.get("head.conv.weight")
    if stored is None or stored.shape[0] != num_classes:
        found = "no head" if stored is None else f"a head of {stored.shape[0]} classes"
        raise ValueError(f"{source} has {found}; the dense network needs a classifier of its {num_classes} classes")
    own = model.state_dict()
    for key in ("head.conv.weight", "head.conv.bias"):
        state[key] = torch.cat([state[key].to(own[key].dtype), own[key][num_classes:]])
    load_state_dict_checked(model, state, source)


def parameter_groups(model, weight_decay):
    """SGD parameter groups: weight decay on convolution / linear weights only. Decaying GroupNorm
    scales and biases only fights the normalisation, the usual exclusion from scratch."""
    if not weight_decay:
        return [{"params": list(model.parameters())}]  # one group, as in runs before --weight_decay
    decayed = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    chosen = {id(p) for p in decayed}
    return [{"params": decayed, "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if id(p) not in chosen], "weight_decay": 0.0}]


# --- batches and log ---

def fits_in_memory(num_images, image_size, mask_size, device):
    """Rough size of the decoded split against what the device can hold."""
    needed = num_images * (3 * image_size[0] * image_size[1] + mask_size[0] * mask_size[1])
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return needed < 0.4 * free
    return needed < 6 * 2 ** 30


def build_batches(args, data: TrainingData, start_step: int, ctx: RunContext):
    """(batch source, whether it is in memory): this process's slice of each global batch from
    `start_step` on, from the decoded split on the device when it fits."""
    indices = GlobalBatchIndices(len(data.train_indices), args.batch, ctx.rank, ctx.world_size, args.seed, start_step)
    train_set = restrict(data.dataset, data.train_indices)
    mask_size = (args.resolution,) * 2 if train_set.with_masks else (0, 0)
    in_memory = args.data_on_device == "always" or (args.data_on_device == "auto" and fits_in_memory(
        len(train_set), decoded_size(train_set), mask_size, ctx.device))
    if in_memory:
        decoded = decode_all(train_set, workers=args.workers, desc=f"decode {Path(args.datadir).name}")
        return InMemoryBatches(decoded, indices, args.resolution, ctx.device, seed=args.seed,
                               train_size=data.train_size, scale_range=args.scale_range, flip=args.flip,
                               pad=bool(args.train_pad)), True
    for flag, value, usual in (("flip", args.flip, "random"), ("train_pad", args.train_pad, 0)):
        if value != usual:
            raise ValueError(f"--{flag} {value} needs the training images in memory, which --data_on_device "
                             f"{args.data_on_device} does not allow here: pass --data_on_device always, or drop "
                             f"--{flag}")
    return LoaderBatches(train_set, indices, args.resolution, ctx.device, workers=args.workers,
                         train_size=data.train_size, scale_range=args.scale_range), False


def open_log(run_dir: Path, ctx: RunContext):
    """The run's TensorBoard writer (main process; None on the others)."""
    if not ctx.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter
    run_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(str(run_dir / "tensorboard"))


def describe_run(args, data: TrainingData, head_size: int, schedule, mixup_alpha: float, in_memory: bool,
                 start_step: int, resumed_from: Path | None, ctx: RunContext) -> None:
    """What this invocation trains, and how (printed by the main process)."""
    print(f"[train] task={args.task} model={args.model} classes={len(data.classes)} head={head_size} "
          f"images={len(data.train_indices)} held-out={len(data.holdout_indices)} device={ctx.device} amp={ctx.amp} "
          f"processes={ctx.world_size} data={'in memory' if in_memory else 'worker loader'}")
    dfb = args.task == "dfb"
    rule = {"bit": "warm-up, x0.1 steps, stop", "cosine": "warm-up, cosine to 0 at stop",
            "linear": "warm-up, linear to 0 at stop"}[args.schedule]
    print(f"[train] schedule {schedule} ({rule}), base lr {args.base_lr}, weight decay {args.weight_decay}, "
          f"nesterov {args.nesterov}, label smoothing {args.label_smoothing}, batch {args.batch}, "
          f"mixup {mixup_alpha}, {'reflection-pad' if args.train_pad else 'resize'} {data.train_size} -> "
          + (f"scale U{tuple(args.scale_range)} -> " if args.scale_range else "") + f"crop {args.resolution}, "
          + f"{args.flip} flips, " + (f"weight EMA decay {args.ema_decay}, " if args.ema_decay else "")
          + ("lookahead (airbench's), " if args.lookahead else "")
          + (f"image loss weight {args.image_loss_weight}, " if dfb else "")
          + (f"initialised from {args.init_from}, " if dfb and args.init_from and resumed_from is None else "")
          + (f"resuming at step {start_step} from {resumed_from}" if resumed_from is not None else "fresh start"))


# --- what the loop calls: evaluations and checkpoints ---

@dataclass
class Evaluator:
    """evaluate(step): top-1 on --test_datadir, and on the held-out images top-1 and, for dfb, the
    dense masks' scores; logged by the main process."""
    args: argparse.Namespace
    ctx: RunContext
    model: nn.Module
    writer: object  # SummaryWriter on the main process, else None
    num_classes: int
    test_dataset: torch.utils.data.Dataset | None
    holdout_dataset: torch.utils.data.Dataset | None

    @classmethod
    def open(cls, args, ctx: RunContext, model, writer, data: TrainingData) -> "Evaluator":
        test_dataset = None
        if args.test_datadir:
            test_dataset = open_split(args.test_datadir, args.resolution, classes=data.classes,
                                      skip_corrupt=args.skip_corrupt)
        holdout_dataset = restrict(data.dataset, data.holdout_indices) if len(data.holdout_indices) else None
        return cls(args, ctx, model, writer, len(data.classes), test_dataset, holdout_dataset)

    def __call__(self, step: int) -> dict:
        metrics = {}
        if self.test_dataset is not None:
            metrics["test_top1"] = self._top1(self.test_dataset, "eval")
        if self.holdout_dataset is not None:  # image-level top-1 on held-out training images: for choosing settings
            metrics["val_top1"] = self._top1(self.holdout_dataset, "held-out")
        if self.holdout_dataset is not None and self.args.task == "dfb":
            ctx, args = self.ctx, self.args
            metrics.update(evaluate_masks(self.model, self.holdout_dataset, args.resolution, ctx.device, args.batch,
                                          ctx.amp, self.num_classes, ctx.rank, ctx.world_size))
        if self.ctx.is_main:
            for key, value in metrics.items():
                self.writer.add_scalar(f"eval/{key}", value, step)
            print(f"[train] step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def _top1(self, dataset, desc: str) -> float:
        ctx, args = self.ctx, self.args
        outputs = extract(self.model, dataset, args.resolution, ctx.device, args.batch, ctx.amp, args.workers,
                          ctx.rank, ctx.world_size, desc=desc)
        return top1(outputs["logits"][:, :self.num_classes], outputs["labels"])


@dataclass
class CheckpointSaver:
    """save(step, finished=False): the run's checkpoint (docs/CONTRACTS.md §3), written by the main
    process while the others wait."""
    args: argparse.Namespace
    ctx: RunContext
    ckpt_file: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: TrainingData
    # --ema_decay / --lookahead: stored beside the weights, so a resumed run averages on
    average: WeightAverage | None = None

    def __call__(self, step: int, finished: bool = False) -> None:
        args = self.args
        if self.ctx.is_main:
            save_checkpoint(self.ckpt_file, model_state=self.model.state_dict(),
                            optim_state=self.optimizer.state_dict(), step=step, args=vars(args), task=args.task,
                            model_name=args.model, classes=self.data.classes, resolution=args.resolution,
                            finished=finished, data=self.data.fingerprint, half_stride=args.half_stride,
                            holdout_samples=self.data.holdout_samples,
                            ema_state=self.average.state_dict() if self.average is not None else None)
        distributed.barrier()


# --- the end ---

def leave_unfinished_run(done: int, last_step: int, save: CheckpointSaver, ckpt_file: Path, ctx: RunContext) -> None:
    save(done)
    if ctx.is_main:
        print(f"[train] stopped after step {done} of {last_step} (--stop_after); rerun the same "
              f"command to resume from {ckpt_file}")
    distributed.cleanup()


def finish_run(args, run_dir: Path, ckpt_file: Path, ctx: RunContext, evaluate: Evaluator, save: CheckpointSaver,
               writer, last_step: int, started: float, average: WeightAverage | None = None) -> dict:
    """Final evaluation, the finished checkpoint, final_metrics.json and the --export copy; with
    --ema_decay (--lookahead) all of them hold the weight average (slow weights), not the last weights."""
    if average is not None:
        average.copy_to_model()
    metrics = evaluate(last_step)
    metrics.update(steps=last_step, train_seconds_this_run=round(time.perf_counter() - started, 1),
                   initialised_from=initialisation(args))
    save(last_step, finished=True)
    if ctx.is_main:
        write_text_atomic(final_metrics_path(run_dir), json.dumps(metrics, indent=2) + "\n")
        writer.close()
        print(f"[train] done: {ckpt_file}" + (f", ID top-1 {metrics['test_top1']:.4f}" if "test_top1" in metrics else ""))
    export(args, ckpt_file, ctx.is_main)
    distributed.cleanup()
    return metrics


def export(args, ckpt_file, main):
    """Copy the finished checkpoint to --export (e.g. cls_pretrained_models/cifar10.pth.tar)."""
    if main and args.export:
        with atomic_path(args.export) as tmp:
            shutil.copyfile(ckpt_file, tmp)
        print(f"[train] exported {args.export}")
