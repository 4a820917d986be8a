"""The numbers the classifier-recipe pilots need (docs/CIFAR_RECIPE.md), as a small CLI:

    python -m bench.recipe_pilots steps --model ResNetV2-C32-M --resolution 32 --batch 256 --pflop 0.1
        -> the number of steps whose training compute is that budget
    python -m bench.recipe_pilots table --runs runs/cifar_pilots name1 name2 ...
        -> a Markdown table of each pilot's val top-1, plain and with flip test-time augmentation
    python -m bench.recipe_pilots test --runs runs/cifar_full4 --datadir <test split> name1 ...
        -> the same on a test split: to be run only after the rule has chosen
    python -m bench.recipe_pilots speed --models ResNetV2-Tiny@64 ResNetV2-C32-S@32 ...
        -> each candidate's forward FLOPs, parameters and training images/s on this machine

Training compute is counted as docs/PRETRAINED.md counts it: 3 x the forward FLOPs of
torch.utils.flop_counter (2 per multiply-add) x the images seen. Test-time augmentation's forwards
are not training compute and are counted apart.
"""
import argparse
import json
from pathlib import Path

import torch

from bench.benchmark import count_flops, measure
from datasets.sources import open_split, relative_paths, restrict
from models.loading import load_network
from models.resnetv2 import create_model
from utils.evaluate.engine import extract, top1, with_tta


def forward_flops(model_name: str, resolution: int, head_size: int = 10) -> int:
    """FLOPs of one forward of one image."""
    model = create_model(model_name, head_size=head_size, zero_head=False).eval()
    return count_flops(lambda m, x: m(x), model, resolution, torch.device("cpu"))


def training_pflop(model_name: str, resolution: int, images_seen: int, head_size: int = 10) -> float:
    return 3 * forward_flops(model_name, resolution, head_size) * images_seen / 1e15


def steps_for_budget(model_name: str, resolution: int, batch: int, pflop: float, head_size: int = 10) -> int:
    """The most steps of `batch` images whose training compute stays within `pflop`."""
    per_step = 3 * forward_flops(model_name, resolution, head_size) * batch / 1e15
    return int(pflop // per_step)


# eval.py --tta -> the key of its top-1 in split_top1's result
TTA_COLUMNS = {"none": "top1", "flip": "top1_flip", "flip_translate": "top1_flip_translate"}


def split_top1(run_dir: Path, datadir: str, held_out_only: bool, batch: int = 256) -> dict:
    """Top-1 of a finished run's checkpoint on a split under each eval.py --tta (TTA_COLUMNS' keys):
    on the images the run held out of its training split (held_out_only), or on every image of a test split."""
    model, checkpoint, _, head_size = load_network(run_dir / "checkpoint.pth.tar", expect_task="cls")
    resolution = checkpoint["resolution"]
    dataset = open_split(datadir, resolution, classes=checkpoint["classes"])
    if held_out_only:
        held_out = set(checkpoint["holdout_samples"] or ())
        if not held_out:
            raise ValueError(f"{run_dir}: the run held no images out (train it with --holdout)")
        dataset = restrict(dataset, [i for i, path in enumerate(relative_paths(dataset)) if path in held_out])
    result = {}
    for tta, name in TTA_COLUMNS.items():
        outputs = extract(with_tta(model, tta).eval(), dataset, resolution, torch.device("cpu"), batch, "bf16",
                          workers=0, desc=name)
        result[name] = top1(outputs["logits"], outputs["labels"])
    return result


def training_speed(model_name: str, resolution: int, batch: int = 256, steps: int = 4, repeats: int = 3) -> dict:
    """Forward GFLOP, parameters and the median images/s of a bf16-autocast SGD step (random data,
    after two warm-up steps) of one candidate on the CPU, at the current torch threads."""
    model = create_model(model_name, head_size=10, zero_head=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images, labels = torch.randn(batch, 3, resolution, resolution), torch.randint(0, 10, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    rate = measure(step, batch, warmup=2, steps=steps, repeats=repeats, device=torch.device("cpu"))
    return {"gflop": forward_flops(model_name, resolution) / 1e9, "images_per_s": rate["images_per_s"],
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_map": tuple(model.feature_map(images[:1]).shape[1:])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    steps = commands.add_parser("steps", help="steps of a training-compute budget")
    steps.add_argument("--model", required=True)
    steps.add_argument("--resolution", type=int, required=True)
    steps.add_argument("--batch", type=int, required=True)
    steps.add_argument("--pflop", type=float, required=True)
    steps.add_argument("--head_size", type=int, default=10)
    table = commands.add_parser("table", help="val top-1 of finished pilots")
    table.add_argument("--runs", required=True, help="the folder holding one run folder per pilot")
    table.add_argument("--datadir", required=True, help="the training split the pilots held images out of")
    table.add_argument("names", nargs="+")
    test = commands.add_parser("test", help="test top-1 of finished pilots: only after the rule has chosen")
    test.add_argument("--runs", required=True, help="the folder holding one run folder per pilot")
    test.add_argument("--datadir", required=True, help="the test split")
    test.add_argument("names", nargs="+")
    speed = commands.add_parser("speed", help="FLOPs and training images/s of candidates")
    speed.add_argument("--models", nargs="+", required=True, metavar="MODEL@RESOLUTION")
    speed.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    if args.command == "speed":
        print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, bf16 autocast, one SGD step\n")
        print("| model @ px | forward GFLOP | parameters | final map | train img/s | GFLOP/s (3 x forward) |\n"
              "|---|---|---|---|---|---|")
        for item in args.models:
            name, _, resolution = item.partition("@")
            result = training_speed(name, int(resolution or 32), args.batch)
            print(f"| {name} @ {resolution or 32} | {result['gflop']:.3f} | {result['parameters'] / 1e6:.2f} M | "
                  f"{'x'.join(map(str, result['final_map']))} | {result['images_per_s']:.0f} | "
                  f"{3 * result['gflop'] * result['images_per_s']:.0f} |", flush=True)
        return
    if args.command == "steps":
        print(steps_for_budget(args.model, args.resolution, args.batch, args.pflop, args.head_size))
        return
    split = "val" if args.command == "table" else "test"
    print(f"| pilot | model | steps x batch | training PFLOP | {split} top-1 % | {split} top-1 % (flip TTA) | "
          f"{split} top-1 % (multi-crop TTA) |\n|---|---|---|---|---|---|---|")
    for name in args.names:
        run_dir = Path(args.runs) / name
        metrics = json.loads((run_dir / "final_metrics.json").read_text())
        run_args = torch.load(run_dir / "checkpoint.pth.tar", map_location="cpu", weights_only=False)["args"]
        images = metrics["steps"] * run_args["batch"]
        pflop = training_pflop(run_args["model"], run_args["resolution"], images)
        result = split_top1(run_dir, args.datadir, held_out_only=args.command == "table")
        print(f"| {name} | {run_args['model']} | {metrics['steps']} x {run_args['batch']} | {pflop:.3f} | "
              f"{100 * result['top1']:.2f} | {100 * result['top1_flip']:.2f} | "
              f"{100 * result['top1_flip_translate']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
