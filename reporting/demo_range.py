"""How much the demo's numbers move between runs: the range (min–max) over several demo runs of
FPR95 and AUROC for each score on the classifier, on the DFB network and fused (DFB-x).

    for s in 0 1 2; do OUT=demo_seed$s SEED=$s bash scripts/demo.sh; done
    python -m reporting.demo_range demo_seed0 demo_seed1 demo_seed2

Each run folder is a demo OUT (results_cls/results.csv and results_dfb/results.csv, eval.py's
format); the OOD sets are those of the first run.
"""
import argparse
import csv
from pathlib import Path

METHODS = ("MSP", "Energy", "ViM", "KNN", "Mahalanobis")
NETWORKS = (("results_cls", "{m}, classifier", "{m}"), ("results_dfb", "{m}, DFB network", "{m}"),
            ("results_dfb", "**DFB-{m}**", "DFB-{m}"))


def read_results(path):
    """{(method, ood set): (fpr95, auroc)} in %, from one results.csv."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {path.parent.parent} the OUT folder of a finished demo?")
    with open(path, newline="") as handle:
        return {(row["method"], row["ood_dataset"]): (100 * float(row["fpr95"]), 100 * float(row["auroc"]))
                for row in csv.DictReader(handle)}


def value_range(values):
    low, high = min(values), max(values)
    return f"{low:.1f}" if round(low, 1) == round(high, 1) else f"{low:.1f}–{high:.1f}"


def range_table(run_dirs):
    """Markdown table: one row per (score, network), one column per OOD set, cells
    'FPR95 range / AUROC range' over the runs."""
    results = {folder: [read_results(Path(run) / folder / "results.csv") for run in run_dirs]
               for folder in {folder for folder, _, _ in NETWORKS}}
    ood_sets = list(dict.fromkeys(ood for _, ood in results["results_cls"][0]))
    rows = [(label.format(m=method), folder, key.format(m=method)) for method in METHODS
            for folder, label, key in NETWORKS]
    rows.append(("Background alone (direction chosen on validation data)", "results_dfb", "Background"))
    lines = ["| score | " + " | ".join(f"{ood} FPR95↓ / AUROC↑" for ood in ood_sets) + " |",
             "|---|" + "---|" * len(ood_sets)]
    for label, folder, key in rows:
        cells = []
        for ood in ood_sets:
            pairs = [run[(key, ood)] for run in results[folder]]
            cells.append(f"{value_range([p[0] for p in pairs])} / {value_range([p[1] for p in pairs])}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="OUT folders of finished demo runs")
    args = parser.parse_args(argv)
    print(range_table(args.runs), end="")


if __name__ == "__main__":
    main()
