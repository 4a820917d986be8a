"""Time to accuracy of the classifier stage: for each preset of scripts/reproduce_small.sh, the stage
as the script runs it (its own flags, data and threads), then one table: wall time, test top-1,
training PFLOP and the share of this machine's measured bf16 matmul peak it ran at.

    python -m bench.time_to_accuracy --presets cpu_tiny64 cpu      # old preset beside new, one run
    python -m bench.time_to_accuracy --presets cpu --id cifar100 --json tta.json

Each preset runs `PRESET=<p> STOP_AFTER=train_cls bash scripts/reproduce_small.sh` into
<out>/<id>_<p>/ (a finished stage is kept, so a rerun only prints the table; delete the folder to
time it again). The stage's wall time is the script's own record (stage_times.json); training
compute is counted as docs/CIFAR_RECIPE.md §1 counts it (3 x forward FLOPs x images seen).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.benchmark import measure_peak
from bench.recipe_pilots import training_pflop

ROOT = Path(__file__).resolve().parent.parent


def classifier_stage(preset: str, id_set: str, out: Path, env_overrides: dict) -> dict:
    """Run (or find finished) the classifier stage of one preset; its numbers."""
    run_dir = out / f"{id_set}_{preset}"
    env = dict(os.environ, PRESET=preset, ID=id_set, OUT=str(run_dir), STOP_AFTER="train_cls", **env_overrides)
    subprocess.run(["bash", str(ROOT / "scripts" / "reproduce_small.sh")], env=env, check=True, cwd=ROOT)
    times = json.loads((run_dir / "stage_times.json").read_text())
    metrics = json.loads((run_dir / "runs" / "cls" / "final_metrics.json").read_text())
    checkpoint = torch.load(run_dir / "runs" / "cls" / "checkpoint.pth.tar", map_location="cpu", weights_only=False)
    args = checkpoint["args"]
    pflop = training_pflop(args["model"], args["resolution"], metrics["steps"] * args["batch"],
                           len(checkpoint["classes"]))
    seconds = times["train_cls"]
    return {"preset": preset, "id": id_set, "model": args["model"], "resolution": args["resolution"],
            "steps": metrics["steps"], "batch": args["batch"], "training_pflop": pflop, "stage_seconds": seconds,
            "test_top1": metrics.get("test_top1"), "val_top1": metrics.get("val_top1")}


def render(rows: list[dict], peak: dict) -> str:
    lines = [f"bf16 matmul peak of this machine: {peak['flop_per_s'] / 1e12:.3f} TFLOP/s "
             f"({peak['matmul_size']}^2, {torch.get_num_threads()} threads)", "",
             "| ID | preset | model @ px | steps x batch | training PFLOP | stage minutes | test top-1 % | % of bf16 peak |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        share = 100 * row["training_pflop"] * 1e15 / row["stage_seconds"] / peak["flop_per_s"]
        top1 = f"{100 * row['test_top1']:.2f}" if row["test_top1"] is not None else "-"
        lines.append(f"| {row['id']} | {row['preset']} | {row['model']} @ {row['resolution']} | {row['steps']} x "
                     f"{row['batch']} | {row['training_pflop']:.3f} | {row['stage_seconds'] / 60:.1f} | {top1} | "
                     f"{share:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["cpu_tiny64", "cpu"])
    parser.add_argument("--id", default="cifar10", choices=["cifar10", "cifar100"])
    parser.add_argument("--out", type=Path, default=Path("runs/time_to_accuracy"))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a variable of reproduce_small.sh for every preset (tiny runs: STEPS_CLS=6 ...)")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--set {item!r}: expected NAME=VALUE")
        overrides[name] = value
    rows = [classifier_stage(preset, args.id, args.out, overrides) for preset in args.presets]
    peak = measure_peak(torch.device("cpu"), "bf16")
    print(render(rows, peak))
    if args.json:
        args.json.write_text(json.dumps({"peak": peak, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
