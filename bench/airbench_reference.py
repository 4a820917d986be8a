"""airbench94's network and training rule (KellerJordan/cifar10-airbench; Jordan, "94% on CIFAR-10 in
3.29 Seconds on a Single GPU", 2024), trained by this repository's data pipeline on the split that
docs/CIFAR_RECIPE.md's pilots hold out of CIFAR-10 (10 %, seed 0). A reference, not a candidate: its
max-pooled, bias-free head has no dense form, so DFB cannot use the network. It answers whether our loop
and data reach airbench's accuracy on this CPU with airbench's recipe exactly (§11, stage 7c).

  python -m bench.airbench_reference --datadir dataset/reproduce_small/trainall_testall_oodall/cifar10/train \\
      --out runs/airbench_reference

`--holdout 0 --testdir <CIFAR-10 test split>` trains on all 50,000 images and evaluates on the test split instead,
the setting of airbench's published figure (a reference only: no setting is chosen on it).

What is airbench94's and what is ours: the network, initialisation (whitening, Dirac), optimiser constants,
schedule, lookahead, label smoothing, 9.9 epochs at batch 1024, whitening bias trained for 3 epochs, and the
multi-crop TTA are airbench94's; the batches (2 px reflection-padded crops, per-epoch alternating flips,
`datasets.sources.InMemoryBatches`), bf16 autocast on the CPU, the held-out split and the evaluation are ours.
One process, no resume (about 22 minutes on one core in bf16; `--amp none` trains and evaluates in fp32).
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from bench.benchmark import count_flops
from datasets.folder import decode_all
from datasets.sources import GlobalBatchIndices, InMemoryBatches, open_split, restrict
from datasets.transforms import normalize
from models.resnetv2 import patch_whitening_filters
from utils.base.io import write_text_atomic
from utils.evaluate.engine import TTA_MODES, extract, top1, with_tta
from utils.train.main import holdout_split
from utils.train.weight_average import Lookahead

# airbench94's hyperparameters
EPOCHS = 9.9
BATCH = 1024
LR = 11.5  # per 1024 examples, of the summed loss
MOMENTUM = 0.85
WEIGHT_DECAY = 0.0153  # per 1024 examples, decoupled from the rate
BIAS_SCALER = 64.0  # BatchNorm biases learn 64x faster
LABEL_SMOOTHING = 0.2
WHITEN_BIAS_EPOCHS = 3
WIDTHS = (64, 256, 256)
BATCHNORM_MOMENTUM = 0.6  # airbench's convention: torch's momentum is 1 - this
SCALING_FACTOR = 1 / 9
WHITEN_KERNEL = 2
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # airbench normalises per channel
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class BatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: eps 1e-12, a fixed scale of 1, a learnt bias."""

    def __init__(self, channels):
        super().__init__(channels, eps=1e-12, momentum=1 - BATCHNORM_MOMENTUM)
        self.weight.requires_grad_(False)


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias; its first in_channels filters start as the identity (Dirac)."""

    def __init__(self, cin, cout):
        super().__init__(cin, cout, kernel_size=3, padding="same", bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[:cin])


class ConvGroup(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.pool, self.norm1 = Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout)
        self.conv2, self.norm2 = Conv(cout, cout), BatchNorm(cout)

    def forward(self, x):
        x = F.gelu(self.norm1(self.pool(self.conv1(x))))
        return F.gelu(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """airbench94's network on our inputs (x = pixels / 127.5 - 1, re-normalised per channel as airbench
    does). forward_with_features and head_size / feature_dim let utils.evaluate.engine's extract and TTA
    wrappers run it: the features are the max-pooled 256 channels, the logits a bias-free linear map of them
    scaled by 1/9."""

    def __init__(self, num_classes=10):
        super().__init__()
        whiten_width = 2 * 3 * WHITEN_KERNEL ** 2
        self.whiten = nn.Conv2d(3, whiten_width, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        widths = (whiten_width, *WIDTHS)
        self.groups = nn.Sequential(*(ConvGroup(cin, cout) for cin, cout in zip(widths, widths[1:])))
        self.head = nn.Linear(WIDTHS[-1], num_classes, bias=False)
        self.head_size, self.feature_dim = num_classes, WIDTHS[-1]
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        self.register_buffer("input_scale", 1 / (2 * std), persistent=False)
        self.register_buffer("input_shift", (0.5 - mean) / std, persistent=False)

    def airbench_inputs(self, x):
        """Our x = 2 p - 1 (p in [0, 1]) -> airbench's (p - mean) / std."""
        return x * self.input_scale + self.input_shift

    def forward_with_features(self, x):
        x = self.groups(F.gelu(self.whiten(self.airbench_inputs(x))))
        features = F.adaptive_max_pool2d(x, 1).flatten(1)  # nn.MaxPool2d(3) of the 3x3 map
        return self.head(features) * SCALING_FACTOR, features

    def forward(self, x):
        return self.forward_with_features(x)[0]


def lr_multiplier(step, total_steps):
    """airbench94's schedule: from 0.2 up to 1 over the first 23 % of the steps, then down to 0.07."""
    warmup = int(total_steps * 0.23)
    if step < warmup:
        fraction = step / warmup
        return 0.2 * (1 - fraction) + 1.0 * fraction
    fraction = (step - warmup) / (total_steps - warmup)
    return 1.0 * (1 - fraction) + 0.07 * fraction


def optimizer_groups(model):
    """airbench94's SGD groups: rates for the summed loss, the weight decay decoupled from them (lr x wd
    = WEIGHT_DECAY x BATCH / kilostep), BatchNorm biases at BIAS_SCALER x the rate."""
    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr, decay = LR / kilostep, WEIGHT_DECAY * BATCH / kilostep
    norm_biases = [p for name, p in model.named_parameters() if "norm" in name and p.requires_grad]
    others = [p for name, p in model.named_parameters() if "norm" not in name and p.requires_grad]
    lr_biases = lr * BIAS_SCALER
    return [{"params": norm_biases, "lr": lr_biases, "weight_decay": decay / lr_biases},
            {"params": others, "lr": lr, "weight_decay": decay / lr}]


def train(model, batches, total_steps, batches_per_epoch, amp="bf16", progress=True):
    """airbench94's loop on our batches: summed label-smoothed loss, Nesterov SGD with the schedule,
    lookahead after every step (every 5th pulls), the whitening bias frozen after 3 epochs; ends with the
    slow weights."""
    optimizer = torch.optim.SGD(optimizer_groups(model), momentum=MOMENTUM, nesterov=True)
    base_rates = [group["lr"] for group in optimizer.param_groups]
    lookahead = Lookahead(model, total_steps)
    model.train()
    for step, (images, labels, _) in zip(tqdm(range(total_steps), desc="airbench", disable=not progress), batches):
        model.whiten.bias.requires_grad_(step // batches_per_epoch < WHITEN_BIAS_EPOCHS)
        for group, rate in zip(optimizer.param_groups, base_rates):
            group["lr"] = rate * lr_multiplier(step, total_steps)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=LABEL_SMOOTHING, reduction="none").sum()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"airbench reference: the loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lookahead.update()
    lookahead.copy_to_model()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datadir", required=True,
                        help="a training split (ImageFolder) of 32-px images: CIFAR-10's, CIFAR-100's or a copy made "
                             "by bench.jpeg_cost (the input normalisation stays CIFAR-10's, as airbench's)")
    parser.add_argument("--out", required=True, help="folder for result.json")
    parser.add_argument("--holdout", type=float, default=0.1,
                        help="fraction of --datadir held out and evaluated (0 with --testdir: train on all of it)")
    parser.add_argument("--testdir", help="evaluate on this split (ImageFolder, e.g. CIFAR-10's test split) instead "
                                          "of the held-out images: a reference against published test figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=EPOCHS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--amp", choices=["bf16", "none"], default="bf16",
                        help="bf16 autocast (ours) or fp32 throughout, training and evaluation")
    args = parser.parse_args(argv)
    if args.testdir is None and not args.holdout > 0:
        parser.error("--holdout 0 leaves nothing to evaluate: give --testdir, or hold out a fraction of --datadir")

    dataset = open_split(args.datadir, 32)
    test_set = open_split(args.testdir, 32) if args.testdir else None
    if test_set is not None and test_set.classes != dataset.classes:
        parser.error(f"--testdir {args.testdir} has other classes than --datadir {args.datadir}")
    train_indices, holdout_indices = holdout_split(len(dataset), args.holdout, args.seed)
    decoded = decode_all(restrict(dataset, train_indices), desc="decode train")
    batches_per_epoch = len(train_indices) // args.batch
    total_steps = math.ceil(batches_per_epoch * args.epochs)
    torch.manual_seed(args.seed)
    model = AirbenchNet(len(dataset.classes))
    chosen = np.random.default_rng(args.seed).choice(len(train_indices), min(5000, len(train_indices)), replace=False)
    with torch.no_grad():
        model.whiten.weight.copy_(patch_whitening_filters(
            model.airbench_inputs(normalize(decoded["images"][np.sort(chosen)])), kernel_size=WHITEN_KERNEL))
    batches = InMemoryBatches(decoded, GlobalBatchIndices(len(train_indices), args.batch, seed=args.seed), 32,
                              torch.device("cpu"), seed=args.seed, train_size=36, flip="alternate", pad=True)
    started = time.perf_counter()
    train(model, batches, total_steps, batches_per_epoch, args.amp)
    minutes = (time.perf_counter() - started) / 60

    model.eval()
    evaluated, split = (test_set, "test") if test_set is not None else (restrict(dataset, holdout_indices), "val")
    result = {"evaluated_on": split, "amp": args.amp, "steps": total_steps, "batch": args.batch, "epochs": args.epochs,
              "train_images": len(train_indices),
              "held_out_images": len(holdout_indices), "evaluated_images": len(evaluated),
              "training_minutes": round(minutes, 1),
              "training_pflop": 3 * count_flops(lambda m, x: m(x), model, 32, torch.device("cpu"))
              * total_steps * args.batch / 1e15}
    for tta in TTA_MODES:
        outputs = extract(with_tta(model, tta), evaluated, 32, torch.device("cpu"), 500, args.amp, workers=0, desc=tta)
        result[f"{split}_top1_{tta}"] = top1(outputs["logits"], outputs["labels"])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(args.out) / "result.json", json.dumps(result, indent=2) + "\n")
    print(f"| run | steps x batch | training PFLOP | minutes | {split} top-1 % | flip TTA | multi-crop TTA |\n"
          "|---|---|---|---|---|---|---|\n"
          f"| airbench94 reference ({args.amp}) | {total_steps} x {args.batch} | {result['training_pflop']:.3f} | "
          f"{minutes:.1f} | "
          + " | ".join(f"{100 * result[f'{split}_top1_{tta}']:.2f}" for tta in TTA_MODES) + " |")


if __name__ == "__main__":
    main()
