"""Everything `train.py` sets up before the loop: data, model, optimizer, resume, logging,
and what happens at checkpoints and evaluations."""
import hashlib
import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from datasets.folder import decode_all, find_classes, mask_root_for
from datasets.transforms import default_train_size
from datasets.sources import (GlobalBatchIndices, InMemoryBatches, LoaderBatches,
                              decoded_size, open_split, restrict)
from models.resnetv2 import KNOWN_MODELS, create_model, load_state_dict_checked
from utils import distributed
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.engine_eval import extract, top1
from utils.engine_train import DenseLogits, train_loop
from utils.dense_eval import evaluate_masks
from utils.io import atomic_path, remove_stale_temporaries_of, write_text_atomic
from utils.make_masks import mask_format_of, read_provenance
from utils.runtime import default_amp, seed_everything
from utils.schedule import LR_RULES, get_mixup, get_schedule, scale_schedule, with_warmup

BIT_URL = "https://storage.googleapis.com/bit_models/{name}.npz"


def checkpoint_path(run_dir):
    return Path(run_dir) / "checkpoint.pth.tar"


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


def holdout_split(num_items, fraction, seed):
    """Deterministic split of the training set: (train indices, held-out indices)."""
    count = int(round(num_items * fraction))
    order = np.random.default_rng(seed).permutation(num_items)
    return np.sort(order[count:]), np.sort(order[:count])


def fits_in_memory(num_images, image_size, mask_size, device):
    """Rough size of the decoded split against what the device can hold."""
    needed = num_images * (3 * image_size[0] * image_size[1] + mask_size[0] * mask_size[1])
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return needed < 0.4 * free
    return needed < 6 * 2 ** 30


def data_fingerprint(dataset):
    """What a resumed run must find again: the image list and, for dfb, the masks' provenance."""
    listing = hashlib.sha256()
    for path, label in dataset.samples:
        listing.update(f"{Path(path).relative_to(dataset.root)}|{label}\n".encode())
    provenance = read_provenance(dataset.mask_root) if dataset.mask_root is not None else None
    return {"images": len(dataset), "listing_sha256": listing.hexdigest(),
            "mask_provenance": provenance}


# Flags that define what a run computes; a run is resumed (or reported finished) only with the same.
# --base_lr may change, to continue with a lower rate after a loss that was not finite.
RUN_DEFINING_FLAGS = ("task", "model", "resolution", "train_resize", "batch", "steps", "mixup", "seed",
                      "pretrained", "holdout", "half_stride", "mask_format", "schedule", "warmup_steps",
                      "weight_decay", "nesterov", "label_smoothing", "init_from", "image_loss_weight")
# Checkpoints written before these flags existed trained as their defaults do now.
BEFORE_RECIPE_FLAGS = {"schedule": "bit", "warmup_steps": None, "weight_decay": 0.0, "nesterov": False,
                       "label_smoothing": 0.0, "init_from": None, "image_loss_weight": 0.0}


def stored_settings(resume):
    """The run-defining flags a checkpoint ran with, completed for checkpoints older than a flag."""
    stored = dict(resume.get("args") or {})
    if stored and "schedule" not in stored:
        if stored.get("task") == "cls":
            stored["holdout"] = 0.0  # stored as 0.01 then, but cls runs held nothing out
        stored = {**BEFORE_RECIPE_FLAGS, **stored}
    return stored


def check_same_settings(resume, args, ckpt_file):
    stored = stored_settings(resume)
    changed = [flag for flag in RUN_DEFINING_FLAGS if flag in stored and stored[flag] != getattr(args, flag)]
    if changed:
        was = ", ".join(f"--{flag} {stored[flag]} (now {getattr(args, flag)})" for flag in changed)
        raise ValueError(f"{ckpt_file} belongs to a run with {was}; rerun with its settings to resume it, "
                         f"or start a new run with another --name")
    if "base_lr" in stored and stored["base_lr"] != args.base_lr:
        print(f"[train] resuming {ckpt_file} with --base_lr {args.base_lr} (it ran with {stored['base_lr']})")


def check_same_data(resume, fingerprint, ckpt_file, datadir):
    stored = resume.get("data")
    if not stored or stored == fingerprint:
        return
    changed = [key for key in fingerprint if stored.get(key) != fingerprint[key]]
    detail = (f"{stored['images']} images then, {fingerprint['images']} now" if "images" in changed
              else "the same number of images, other files" if "listing_sha256" in changed
              else "the masks were made again since (provenance.json)")
    raise ValueError(f"{ckpt_file} was trained on other data than {datadir} holds now ({detail}); resume with "
                     f"the original data, or start a new run with another --name")


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


def build_batches(args, train_set, indices, train_size, device):
    """(batch source, whether it is in memory): the decoded split on the device when it fits."""
    with_masks = train_set.with_masks
    in_memory = args.data_on_device == "always" or (args.data_on_device == "auto" and fits_in_memory(
        len(train_set), decoded_size(train_set), (args.resolution,) * 2 if with_masks else (0, 0), device))
    if in_memory:
        decoded = decode_all(train_set, workers=args.workers, desc=f"decode {Path(args.datadir).name}")
        return InMemoryBatches(decoded, indices, args.resolution, device, seed=args.seed, train_size=train_size), True
    return LoaderBatches(train_set, indices, args.resolution, device, workers=args.workers,
                         train_size=train_size), False


def run(args):
    if args.model not in KNOWN_MODELS:
        raise ValueError(f"--model {args.model!r} is unknown; known models: {', '.join(KNOWN_MODELS)}")
    device, rank, world_size = distributed.init_distributed(args.device)
    main = distributed.is_main_process()
    amp = args.amp or default_amp(device)
    run_dir = Path(args.logdir) / args.name
    ckpt_file = checkpoint_path(run_dir)

    if main:  # what a killed run was saving is incomplete
        for target in (ckpt_file, args.export):
            if target and remove_stale_temporaries_of(target):
                print(f"[train] removed the unfinished temporary files of {target} left by an interrupted run")
    distributed.barrier()
    resume = load_checkpoint(ckpt_file, expect_task=args.task) if ckpt_file.is_file() else None
    if resume is not None:
        check_same_settings(resume, args, ckpt_file)
    if resume is not None and resume.get("finished"):
        if main:
            print(f"[train] {ckpt_file} is a finished run; nothing to do (delete it or choose another --name)")
        export(args, ckpt_file, main)
        distributed.cleanup()
        return json.loads((run_dir / "final_metrics.json").read_text()) if (run_dir / "final_metrics.json").is_file() else None
    start_step = resume["step"] if resume else 0
    seed_everything(args.seed + rank)

    classes = find_classes(args.datadir)
    num_classes = len(classes)
    if resume is not None and resume["classes"] and list(resume["classes"]) != classes:
        raise ValueError(f"{ckpt_file} was trained on classes {resume['classes']}, but {args.datadir} has {classes}")
    task = args.task
    if task == "dfb" and num_classes > 254:
        raise ValueError(f"masks are uint8 with 255 = ignore: at most 254 classes, {args.datadir} has {num_classes}")
    mask_root = (Path(args.mask_dir) if args.mask_dir else mask_root_for(args.datadir)) if task == "dfb" else None
    if mask_root is not None and not mask_root.is_dir():
        raise FileNotFoundError(
            f"pseudo masks {mask_root} not found: write them first with `python make_cam.py "
            f"--dataset={args.datadir} --model_path=cls_pretrained_models/<dataset>.pth.tar "
            f"--head_size={num_classes}` (or pass --mask_dir)")
    mask_format = mask_format_of(mask_root, args.mask_format) if mask_root is not None else None
    train_size = args.train_resize or default_train_size(args.resolution)
    dataset = open_split(args.datadir, args.resolution, with_masks=task == "dfb", mask_root=mask_root,
                         num_classes=num_classes, train_size=train_size, skip_corrupt=args.skip_corrupt)
    if mask_format is not None:
        dataset = dataset.reading_masks_as(mask_format)
    fingerprint = data_fingerprint(dataset)
    if resume is not None:
        check_same_data(resume, fingerprint, ckpt_file, args.datadir)
    train_indices, holdout_indices = holdout_split(len(dataset), args.holdout, args.seed)
    holdout_samples = [Path(dataset.samples[i][0]).relative_to(dataset.root).as_posix() for i in holdout_indices]
    schedule = get_schedule(len(train_indices))
    if args.steps:
        schedule = scale_schedule(schedule, args.steps)
    schedule = with_warmup(schedule, args.warmup_steps, args.schedule)
    mixup_alpha = (get_mixup(len(train_indices)) if args.mixup is None else args.mixup) if task == "cls" else 0.0

    head_size = num_classes + (1 if task == "dfb" else 0)
    model = build_model(args, head_size, resume, ckpt_file, classes).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    net = DenseLogits(model) if task == "dfb" else model
    if world_size > 1:
        net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    optimizer = torch.optim.SGD(parameter_groups(model, args.weight_decay), lr=args.base_lr, momentum=0.9,
                                nesterov=args.nesterov)
    if resume is not None and resume.get("optim"):
        optimizer.load_state_dict(resume["optim"])

    indices = GlobalBatchIndices(len(train_indices), args.batch, rank, world_size, args.seed, start_step)
    batches, in_memory = build_batches(args, restrict(dataset, train_indices), indices, train_size, device)

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter
        run_dir.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(run_dir / "tensorboard"))
        print(f"[train] task={task} model={args.model} classes={num_classes} head={head_size} "
              f"images={len(train_indices)} held-out={len(holdout_indices)} device={device} amp={amp} "
              f"processes={world_size} data={'in memory' if in_memory else 'worker loader'}")
        rule = "warm-up, x0.1 steps, stop" if args.schedule == "bit" else "warm-up, cosine to 0 at stop"
        print(f"[train] schedule {schedule} ({rule}), base lr {args.base_lr}, weight decay {args.weight_decay}, "
              f"nesterov {args.nesterov}, label smoothing {args.label_smoothing}, batch {args.batch}, "
              f"mixup {mixup_alpha}, resize {train_size} -> crop {args.resolution}, "
              + (f"image loss weight {args.image_loss_weight}, " if task == "dfb" else "")
              + (f"initialised from {args.init_from}, " if task == "dfb" and args.init_from and not resume else "")
              + (f"resuming at step {start_step} from {ckpt_file}" if resume else "fresh start"))

    test_dataset = None
    if args.test_datadir:
        test_dataset = open_split(args.test_datadir, args.resolution, classes=classes,
                                  skip_corrupt=args.skip_corrupt)
    holdout_dataset = restrict(dataset, holdout_indices) if len(holdout_indices) else None

    def evaluate(step):
        metrics = {}
        if test_dataset is not None:
            outputs = extract(model, test_dataset, args.resolution, device, args.batch, amp, args.workers,
                              rank, world_size, desc="eval")
            metrics["test_top1"] = top1(outputs["logits"][:, :num_classes], outputs["labels"])
        if holdout_dataset is not None:  # image-level top-1 on held-out training images: for choosing settings
            outputs = extract(model, holdout_dataset, args.resolution, device, args.batch, amp, args.workers,
                              rank, world_size, desc="held-out")
            metrics["val_top1"] = top1(outputs["logits"][:, :num_classes], outputs["labels"])
        if holdout_dataset is not None and task == "dfb":
            metrics.update(evaluate_masks(model, holdout_dataset, args.resolution, device, args.batch, amp,
                                          num_classes, rank, world_size))
        if main:
            for key, value in metrics.items():
                writer.add_scalar(f"eval/{key}", value, step)
            print(f"[train] step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def save(step, finished=False):
        if main:
            save_checkpoint(ckpt_file, model_state=model.state_dict(), optim_state=optimizer.state_dict(),
                            step=step, args=vars(args), task=task, model_name=args.model, classes=classes,
                            resolution=args.resolution, finished=finished, data=fingerprint,
                            half_stride=args.half_stride, holdout_samples=holdout_samples)
        distributed.barrier()

    started = time.perf_counter()
    stop_at = start_step + args.stop_after if args.stop_after else None
    done = train_loop(net=net, optimizer=optimizer, batches=batches, schedule=schedule, base_lr=args.base_lr,
               start_step=start_step, task=task, num_classes=num_classes, mixup_alpha=mixup_alpha,
               device=device, amp=amp, seed=args.seed, rank=rank, world_size=world_size,
               lr_rule=LR_RULES[args.schedule], label_smoothing=args.label_smoothing,
               image_loss_weight=args.image_loss_weight, writer=writer, on_checkpoint=save,
               checkpoint_every=args.save_every, on_evaluate=evaluate, eval_every=args.eval_every,
               show_progress=main, stop_at=stop_at)
    if done < schedule[-1]:
        save(done)
        if main:
            print(f"[train] stopped after step {done} of {schedule[-1]} (--stop_after); rerun the same "
                  f"command to resume from {ckpt_file}")
        distributed.cleanup()
        return None
    metrics = evaluate(schedule[-1])
    metrics.update(steps=schedule[-1], train_seconds_this_run=round(time.perf_counter() - started, 1))
    save(schedule[-1], finished=True)
    if main:
        write_text_atomic(run_dir / "final_metrics.json", json.dumps(metrics, indent=2) + "\n")
        writer.close()
        print(f"[train] done: {ckpt_file}" + (f", ID top-1 {metrics['test_top1']:.4f}" if "test_top1" in metrics else ""))
    export(args, ckpt_file, main)
    distributed.cleanup()
    return metrics


def export(args, ckpt_file, main):
    """Copy the finished checkpoint to --export (e.g. cls_pretrained_models/cifar10.pth.tar)."""
    if main and args.export:
        with atomic_path(args.export) as tmp:
            shutil.copyfile(ckpt_file, tmp)
        print(f"[train] exported {args.export}")
