"""Does the fast path train as well as the plain one? Short classifier runs, side by side:

  fast:      decoded split in memory, batched augmentation on the device, bf16 autocast
  reference: DataLoader workers with per-image transforms, float32

Each is run with several seeds (the spread between seeds is the noise to compare against);
the table gives the final ID top-1 and the training loss (mean of the logged values over
windows of the run, from tensorboard). The model and training settings are the demo's
(configs/demo.env); explicit options win.

  python -m bench.accuracy_check --data demo_out/data/synthetic --device cpu --steps 400
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_PRESET = REPO / "configs" / "demo.env"
# the variables of configs/demo.env that give the training defaults here
PRESET_NAMES = ("MODEL", "PRETRAINED", "RESOLUTION", "TRAIN_RESIZE", "BATCH", "BASE_LR")
VARIANTS = {"fast": ["--data_on_device", "always", "--amp", "bf16"],
            "reference": ["--data_on_device", "never", "--amp", "none"]}


def loss_curve(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return np.array([(e.step, e.value) for e in events.Scalars("train/loss")])


def read_bash_preset(path, names):
    """{name: value} of the variables `names` as bash sets them by sourcing `path` (the preset is a
    bash file; bash itself reads it, in an environment of PATH alone so that the file decides)."""
    script = 'set -u; source "$1"; shift; for name in "$@"; do printf "%s\\0" "${!name}"; done'
    result = subprocess.run(["bash", "-c", script, "read_bash_preset", str(path), *names], capture_output=True,
                            text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if result.returncode != 0:
        raise ValueError(f"{path}: expected a bash file that sets {', '.join(names)}; bash said: "
                         f"{result.stderr.strip()}")
    return dict(zip(names, result.stdout.split("\0")))


def parse_args(argv=None):
    preset = read_bash_preset(DEMO_PRESET, PRESET_NAMES)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with train/ and test/ (ImageFolder)")
    parser.add_argument("--out", default="runs/accuracy_check")
    # string defaults go through `type` like a command-line value
    parser.add_argument("--model", default=preset["MODEL"])
    parser.add_argument("--pretrained", default=preset["PRETRAINED"])
    parser.add_argument("--resolution", type=int, default=preset["RESOLUTION"])
    parser.add_argument("--train_resize", type=int, default=preset["TRAIN_RESIZE"])
    parser.add_argument("--batch", type=int, default=preset["BATCH"])
    # short runs: half the demo's STEPS_CLS is enough to see the two paths apart
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--base_lr", type=float, default=preset["BASE_LR"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    data = Path(args.data)
    windows = 4
    rows = []
    for variant, flags in VARIANTS.items():
        for seed in args.seeds:
            name = f"{variant}_seed{seed}"
            subprocess.run([sys.executable, "train.py", "--task", "cls", "--datadir", str(data / "train"),
                            "--test_datadir", str(data / "test"), "--logdir", args.out, "--name", name,
                            "--model", args.model, "--pretrained", args.pretrained, "--resolution",
                            str(args.resolution), "--train_resize", str(args.train_resize), "--batch", str(args.batch),
                            "--steps", str(args.steps), "--base_lr", str(args.base_lr), "--seed", str(seed),
                            "--device", args.device, "--workers", str(args.workers), "--eval_every", "0", *flags],
                           check=True, cwd=REPO)
            run_dir = Path(args.out) / name
            top1 = json.loads((run_dir / "final_metrics.json").read_text())["test_top1"]
            curve = loss_curve(run_dir)
            rows.append((variant, seed, top1, [chunk[:, 1].mean() for chunk in np.array_split(curve, windows)]))

    print(f"\n{args.model} at {args.resolution} px, {args.steps} steps, batch {args.batch}, device {args.device}")
    header = ["variant", "seed", "ID top-1"] + [f"loss, quarter {i + 1}" for i in range(windows)]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for variant, seed, top1, losses in rows:
        print(f"| {variant} | {seed} | {100 * top1:.2f} % | " + " | ".join(f"{value:.3f}" for value in losses) + " |")
    for variant in VARIANTS:
        values = [100 * top1 for v, _, top1, _ in rows if v == variant]
        print(f"{variant}: ID top-1 mean {np.mean(values):.2f} %, spread between seeds {np.ptp(values):.2f} points")


if __name__ == "__main__":
    main()
