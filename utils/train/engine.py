"""The training loop shared by both tasks (the run around it is utils/train/main.py).

cls: K-class image classifier, cross-entropy (with MixUp on large datasets).
dfb: (K+1)-class dense network, per-pixel cross-entropy on the pseudo masks (255 ignored),
     optionally plus an image-level cross-entropy on the pooled K foreground logits.
Both: optional label smoothing of the classification targets.
"""
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from datasets.batch_augment import mixup
from datasets.masks import IGNORE_INDEX
from datasets.sources import step_generator
from utils.base.distributed import RunContext
from utils.base.runtime import autocast
from utils.train.schedule import get_lr


class DenseLogits(nn.Module):
    """(per-pixel logits at the input's size, pooled logits [N, K+1]) as the module's forward,
    so DDP and torch.compile see the dense computation. The pooled logits are the mean of the
    dense logits before upsampling; the head is a 1x1 conv, so they equal the classifier
    forward (head applied to the pooled features)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        dense = self.model.dense_logits(images)
        upsampled = F.interpolate(dense, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return upsampled, dense.mean(dim=(2, 3))


def dense_loss(dense_logits, masks):
    """Mean cross-entropy over labelled pixels; zero (with a gradient) if none is labelled."""
    valid = masks != IGNORE_INDEX
    if not valid.any():
        return dense_logits.sum() * 0.0
    return F.cross_entropy(dense_logits.float(), masks.long(), ignore_index=IGNORE_INDEX)


def soft_cross_entropy(logits, targets):
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def smooth_targets(targets, epsilon):
    """Label smoothing of soft targets [B, K]: (1 - e) * y + e / K, the definition
    F.cross_entropy(label_smoothing=e) applies to hard labels."""
    return targets * (1 - epsilon) + epsilon / targets.shape[1]


def gather_global_batch(tensor):
    """This rank's slice of the global batch -> the whole global batch (all ranks' slices in rank
    order; GlobalBatchIndices gives every rank a slice of the same size)."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def classification_step(net, images, labels, num_classes, mixup_alpha, generator, label_smoothing=0.0,
                        rank=0, gather=None):
    """gather: None in one process; under torchrun `gather_global_batch`, for MixUp partners."""
    if mixup_alpha > 0:
        images, targets = mixup(images, labels, num_classes, mixup_alpha, generator=generator, rank=rank,
                                gather=gather)
        logits = net(images)
        loss = soft_cross_entropy(logits, smooth_targets(targets, label_smoothing))
        correct = (logits.argmax(1) == targets.argmax(1)).float().mean()
    else:
        logits = net(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        correct = (logits.argmax(1) == labels).float().mean()
    return loss, {"accuracy": correct}


def dense_step(net, images, masks, labels=None, num_classes=None, image_loss_weight=0.0, label_smoothing=0.0,
               pixel_accuracy=True):
    """Dense loss, plus image_loss_weight * cross-entropy of the pooled K foreground logits and the
    image labels (which then must be given). With labels, also the image-level accuracy; with
    pixel_accuracy, the pixel accuracy (an argmax over the [N, K+1, H, W] logits: the loop asks for it
    only on the steps it logs)."""
    logits, pooled = net(images)
    loss = dense_loss(logits, masks)
    stats = {}
    if pixel_accuracy:
        valid = masks != IGNORE_INDEX
        stats["pixel_accuracy"] = ((logits.argmax(1) == masks) & valid).sum() / valid.sum().clamp_min(1)
    if labels is not None:
        foreground = pooled[:, :num_classes].float()
        stats["accuracy"] = (foreground.argmax(1) == labels).float().mean()
        if image_loss_weight:
            loss = loss + image_loss_weight * F.cross_entropy(foreground, labels, label_smoothing=label_smoothing)
    elif image_loss_weight:
        raise ValueError("the image loss of the dense network needs the image labels")
    return loss, stats


@dataclass(frozen=True)
class TrainLoopConfig:
    """What the loop computes and when it reports, as numbers (the objects it works on are
    train_loop's other arguments)."""
    task: str  # 'cls' or 'dfb'
    num_classes: int  # K
    schedule: Sequence[int]  # utils.train.schedule: its last entry is the number of steps
    base_lr: float
    start_step: int
    mixup_alpha: float  # cls only; 0 = no MixUp
    seed: int
    lr_rule: Callable = get_lr  # lr_rule(step, schedule, base_lr), one of utils.train.schedule.LR_RULES
    label_smoothing: float = 0.0
    image_loss_weight: float = 0.0  # dfb only
    checkpoint_every: int = 1000
    eval_every: int = 0  # 0: never
    log_every: int = 10
    stop_at: int | None = None  # leave before this step (default: the end of the schedule)


def train_loop(cfg: TrainLoopConfig, ctx: RunContext, *, net, optimizer, batches, writer=None, on_checkpoint=None,
               on_evaluate=None, show_progress=True, weight_average=None):
    """Run steps cfg.start_step .. cfg.stop_at-1 (default: to the end of the schedule). Calls
    on_checkpoint(step) every `cfg.checkpoint_every` steps, on_evaluate(step) every `cfg.eval_every`
    steps; weight_average (utils/train/weight_average.py) is updated after every optimizer step.
    Returns the number of steps done in total."""
    schedule = cfg.schedule
    stop = schedule[-1] if cfg.stop_at is None else min(cfg.stop_at, schedule[-1])
    net.train()
    progress = tqdm(total=schedule[-1], initial=cfg.start_step, desc=f"train {cfg.task}", disable=not show_progress,
                    dynamic_ncols=True)
    window_start, window_images = time.perf_counter(), 0
    mask_classes = cfg.num_classes if cfg.task == "dfb" else None
    guard = NonFiniteLossGuard(ctx.device, cfg.start_step, cfg.base_lr, mask_classes)
    try:
        for step, (images, labels, masks) in zip(range(cfg.start_step, stop), batches):
            lr = cfg.lr_rule(step, schedule, cfg.base_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            done = step + 1
            # Reading the loss waits for the device, so it happens only every `log_every` steps.
            logged = done % cfg.log_every == 0 or done == stop
            with autocast(ctx.device, ctx.amp):
                loss, stats = _task_step(cfg, ctx, net, images, labels, masks, step, logged)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if weight_average is not None:
                weight_average.update()
            guard.record(step, loss)

            window_images += images.shape[0]
            if logged:
                guard.check()
                elapsed = time.perf_counter() - window_start
                throughput = window_images / max(elapsed, 1e-9)
                values = {"loss": loss.item(), "lr": lr, **{k: float(v) for k, v in stats.items()}}
                progress.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{throughput:.0f}")
                if writer is not None:
                    for key, value in values.items():
                        writer.add_scalar(f"train/{key}", value, step + 1)
                    writer.add_scalar("train/images_per_second_per_process", throughput, step + 1)
                window_start, window_images = time.perf_counter(), 0
            progress.update(1)
            if on_checkpoint is not None and done % cfg.checkpoint_every == 0 and done != stop:
                guard.check_weights(optimizer, step)  # a checkpoint holds finite weights only
                on_checkpoint(done)
                guard.saved_at(done)
            if on_evaluate is not None and cfg.eval_every and done % cfg.eval_every == 0 and done != stop:
                on_evaluate(done)
                net.train()
        guard.check()
    finally:  # on errors too, so that the message starts on its own line
        progress.close()
    return stop


def _task_step(cfg, ctx, net, images, labels, masks, step, logged):
    """(loss, stats) of one step of the task; stats that cost a pass over the dense logits only when logged."""
    if cfg.task == "cls":
        # the same MixUp draw on every rank: it is made for the global batch
        generator = step_generator(cfg.seed + 1, step, ctx.device)
        return classification_step(net, images, labels, cfg.num_classes, cfg.mixup_alpha, generator,
                                   cfg.label_smoothing, ctx.rank, gather_global_batch if ctx.world_size > 1 else None)
    return dense_step(net, images, masks, labels, cfg.num_classes, cfg.image_loss_weight, cfg.label_smoothing,
                      pixel_accuracy=logged)


class NonFiniteLossGuard:
    """Remembers, on the device (no synchronisation per step), the first step whose loss was
    NaN or infinite; `check` stops training there with the step and the checkpoint kept."""

    def __init__(self, device, start_step, base_lr, mask_classes=None):
        """mask_classes: K of a dense task, whose masks may hold values outside 0..K and 255."""
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros((), device=device)
        self.last_saved, self.base_lr, self.mask_classes = start_step, base_lr, mask_classes

    def record(self, step, loss):
        new = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(new, step, self.first_bad_step)
        self.bad_loss = torch.where(new, loss.detach().float(), self.bad_loss)

    def saved_at(self, step):
        self.last_saved = step

    def check(self):
        step = int(self.first_bad_step.item())
        if step >= 0:
            self._stop(f"loss is {self.bad_loss.item()} at step {step}")

    def check_weights(self, optimizer, step):
        """A finite loss can still overflow the weights in its update."""
        self.check()
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if not torch.stack([torch.isfinite(p).all() for p in parameters]).all():
            self._stop(f"the update of step {step} made the weights non-finite")

    def _stop(self, what):
        kept = (f"the last checkpoint (step {self.last_saved}) is kept and a rerun resumes from it"
                if self.last_saved else "no checkpoint had been written yet")
        data = (f" (mask values outside 0..{self.mask_classes} and {IGNORE_INDEX}?)" if self.mask_classes is not None
                else "")
        raise FloatingPointError(f"{what}; training stopped and {kept}. Lower --base_lr (now {self.base_lr}) "
                                 f"or check the data{data}")
