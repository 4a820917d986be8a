"""The variant tables of the DFB stage (scripts/dfb_ablation.sh, and the "Ablations" section of
reporting/results_report.py): one classifier, then each DFB variant trained on its masks.

    python -m reporting.ablation_table --run_dir runs/dfb_ablation --variants seed0 dense_only --out ABLATION.md

Reads, per variant <v>: runs/dfb_<v>/final_metrics.json (train.py), and where the variant was
evaluated results_dfb_<v>/{accuracy.json, results.csv, fusion_selection.json, dense_layout.json}
(eval.py); the classifier's runs/cls/final_metrics.json and results_cls/. A value a variant does
not have (not evaluated yet, or an evaluation from before the file existed) is shown as "–".

Three tables:
1. classification and validation: ID test top-1, val top-1 (held-out training images), mask pixel
   accuracy and foreground IoU on held-out pseudo masks, the mean validation AUROC of DFB-x over
   the base scores (fusion_selection.json: held-out ID images against the validation OOD set) and
   the background's chosen direction with its validation AUROC: everything here is validation data
   or the ID test split, the numbers a recipe may be chosen on (except the test top-1);
2. per OOD set: AUROC of the background alone (its validated direction) and for how many base
   scores x DFB-x beats x on the classifier (AUROC);
3. per set: blob IoU of the dense foregrounds (dense_layout.json; 1 = the same blob on every image).
"""
import argparse
import csv
import json
from pathlib import Path

from reporting.tables import DASH, markdown_table, pct
from utils.base.io import write_text_atomic

BACKGROUND = "Background"


def read_json(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def read_auroc(path):
    """results.csv -> ({(method, ood set): auroc}, methods, OOD sets in file order); None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    table = {(row["method"], row["ood_dataset"]): float(row["auroc"]) for row in rows}
    return (table, list(dict.fromkeys(row["method"] for row in rows)),
            list(dict.fromkeys(row["ood_dataset"] for row in rows)))


class Variant:
    """What the run folder holds of one DFB variant (suffix: runs/dfb_<suffix>, results_dfb_<suffix>)."""

    def __init__(self, run_dir, label, suffix):
        run_dir = Path(run_dir)
        self.label = label
        final = run_dir / "runs" / f"dfb_{suffix}" / "final_metrics.json"
        self.final = read_json(final)
        if self.final is None:
            raise FileNotFoundError(f"{final} not found: train.py writes it when run 'dfb_{suffix}' finishes")
        results = run_dir / f"results_dfb_{suffix}"
        self.accuracy = read_json(results / "accuracy.json")
        self.results = read_auroc(results / "results.csv")
        self.selection = read_json(results / "fusion_selection.json") or {}
        self.layout = read_json(results / "dense_layout.json") or {}

    def test_top1(self):
        return self.accuracy["top1"] if self.accuracy else self.final.get("test_top1")

    def mean_validation_auroc(self, methods, fusion):
        values = [self.selection.get(f"DFB-{m}[{fusion}]", {}).get("validation_auroc") for m in methods]
        return sum(values) / len(values) if methods and None not in values else None

    def auroc(self, method, ood):
        return self.results[0].get((method, ood)) if self.results else None


def classification_table(classifier, variants, methods, fusion):
    header = ["network", "ID test top-1 %", "val top-1 %", "mask pixel acc. %", "foreground IoU %",
              f"mean validation AUROC of DFB-x ({fusion}) %", "background direction s (validation AUROC %)"]
    rows = [["classifier", pct(classifier.get("test_top1")), pct(classifier.get("val_top1")), DASH, DASH, DASH,
             DASH]]
    for v in variants:
        background = v.selection.get(BACKGROUND)
        rows.append([v.label, pct(v.test_top1()), pct(v.final.get("val_top1")), pct(v.final.get("pixel_accuracy")),
                     pct(v.final.get("foreground_iou")), pct(v.mean_validation_auroc(methods, fusion)),
                     f"{background['sign']:+d} ({pct(background['validation_auroc'])})" if background else DASH])
    return markdown_table(header, rows)


def ood_table(cls_results, variants, methods, ood_names):
    header = ["variant"] + [f"{ood}: background AUROC % / DFB-x beats x" for ood in ood_names]
    rows = []
    for v in variants:
        cells = [v.label]
        for ood in ood_names:
            background = v.auroc(BACKGROUND, ood)
            fused = [v.auroc(f"DFB-{m}", ood) for m in methods]
            base = [cls_results.get((m, ood)) for m in methods]
            beats = (f"{sum(f > b for f, b in zip(fused, base))} of {len(methods)}"
                     if methods and None not in fused + base else DASH)
            cells.append(f"{pct(background)} / {beats}")
        rows.append(cells)
    return markdown_table(header, rows)


def layout_table(variants):
    sets = list(dict.fromkeys(name for v in variants for name in v.layout))
    if not sets:
        return []
    header = ["variant"] + [f"{name}: blob IoU / foreground %" for name in sets]
    rows = [[v.label] + [f"{v.layout[name]['blob_iou']:.3f} / {100 * v.layout[name]['foreground_fraction']:.1f}"
                         if name in v.layout else DASH for name in sets] for v in variants]
    return markdown_table(header, rows)


def variant_tables(run_dir, variants, fusion="logit"):
    """Markdown lines of the three tables; variants: [(label, suffix)]."""
    run_dir = Path(run_dir)
    classifier = read_json(run_dir / "runs" / "cls" / "final_metrics.json") or {}
    cls_accuracy = read_json(run_dir / "results_cls" / "accuracy.json")
    if cls_accuracy:
        classifier = {**classifier, "test_top1": cls_accuracy["top1"]}
    loaded = [Variant(run_dir, label, suffix) for label, suffix in variants]
    cls_results = read_auroc(run_dir / "results_cls" / "results.csv")
    cls_table, methods, ood_names = cls_results if cls_results else ({}, [], [])
    lines = ["Classification and validation (the variant a recipe may be chosen on):", ""]
    lines += classification_table(classifier, loaded, methods, fusion) + [""]
    if ood_names:
        lines += ["OOD test sets (AUROC of the background alone in its validated direction; for how many of the "
                  f"{len(methods)} base scores x DFB-x beats x on the classifier):", ""]
        lines += ood_table(cls_table, loaded, methods, ood_names) + [""]
    layout = layout_table(loaded)
    if layout:
        lines += ["Dense foregrounds (`dense_layout.json`): blob IoU = mean IoU of each image's predicted foreground "
                  "with the pixels that are foreground in at least half of the set's images (1 = one blob everywhere); "
                  "foreground % = share of foreground pixels:", ""] + layout + [""]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="the OUT folder of scripts/dfb_ablation.sh or reproduce_small.sh")
    parser.add_argument("--variants", nargs="+", required=True,
                        help="DFB variants: the suffixes of runs/dfb_<suffix> (e.g. seed0 dense_only)")
    parser.add_argument("--fusion", default="logit", help="eval.py's --fusion (the mode of DFB-x)")
    parser.add_argument("--out", default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    text = "\n".join(variant_tables(args.run_dir, [(name, name) for name in args.variants], args.fusion)) + "\n"
    print(text, end="")
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
