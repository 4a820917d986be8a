"""The table of scripts/dfb_ablation.sh: classification quality of the classifier and of each DFB
variant, from the final_metrics.json that train.py wrote for each run.

    python -m reporting.ablation_table --run_dir runs/dfb_ablation --variants preset no_init --out ABLATION.md
"""
import argparse
import json
from pathlib import Path

from utils.io import write_text_atomic

COLUMNS = (("test_top1", "ID test top-1 %"), ("val_top1", "val top-1 % (held-out training images)"),
           ("pixel_accuracy", "mask pixel accuracy %"), ("foreground_iou", "foreground IoU %"))


def read_metrics(run_dir, name):
    path = Path(run_dir) / "runs" / name / "final_metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train.py writes it when run {name!r} finishes")
    return json.loads(path.read_text())


def ablation_table(run_dir, variants):
    """Markdown rows: the classifier, then each DFB variant, with its top-1 gap to the classifier."""
    classifier = read_metrics(run_dir, "cls")
    header = ["network"] + [label for _, label in COLUMNS] + ["top-1 − classifier (points)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in [("classifier", classifier)] + [(f"DFB `{v}`", read_metrics(run_dir, f"dfb_{v}"))
                                                          for v in variants]:
        cells = [f"{100 * metrics[key]:.2f}" if key in metrics else "–" for key, _ in COLUMNS]
        gap = "" if metrics is classifier else f"{100 * (metrics['test_top1'] - classifier['test_top1']):+.2f}"
        lines.append("| " + " | ".join([name] + cells + [gap]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="the OUT folder of scripts/dfb_ablation.sh")
    parser.add_argument("--variants", nargs="+", required=True, help="DFB variant names (runs/dfb_<name>)")
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    table = ablation_table(args.run_dir, args.variants)
    print(table, end="")
    if args.out:
        write_text_atomic(args.out, table)


if __name__ == "__main__":
    main()
