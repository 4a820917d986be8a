"""The Markdown report of a scripts/reproduce_small.sh run.

    python -m bench.results_report --run_dir runs/reproduce_small            # -> <run_dir>/RESULTS.md
    python -m bench.results_report --run_dir runs/reproduce_small --out docs/RESULTS.md \
        --figures_to docs/results_figures                                    # publish, figures copied

Reads what the run wrote: stage_times.json and run_info.json (bench/run_record.py),
data_manifest.json (bench/reproduce_data.py),
results_{cls,dfb}/{results.csv,accuracy.json}, results_dfb/fusion_selection.json,
masks/train/summary.json (make_cam.py) and runs/{cls,dfb}/final_metrics.json (train.py).
Every number in the report is read from those files; none is computed here except
averages over the OOD sets and differences between two scores.
"""
import argparse
import csv
import json
import os
import shutil
from pathlib import Path

from utils.fusion import DEFAULT_FUSION
from utils.io import atomic_path, write_text_atomic

STAGES = {"data": "unpack the shared archives", "train_cls": "classifier (train.py --task cls)",
          "make_cam": "pseudo masks (make_cam.py)", "train_dfb": "DFB network (train.py --task dfb)",
          "eval_cls": "OOD evaluation, classifier (eval.py)", "eval_dfb": "OOD evaluation, DFB network (eval.py)"}
MASK_DIR = Path("masks") / "train"
METRICS = (("fpr95", "FPR95↓"), ("auroc", "AUROC↑"), ("aupr_in", "AUPR-In↑"), ("aupr_out", "AUPR-Out↑"))
BACKGROUND = "Background"
DASH = "–"

FORMULAS = {"logit": "S = S_fg − s · z_bg / T", "prob": "S = S_fg − s · T · p_bg",
            "logprob": "S = S_fg + s · T · log(1 − p_bg)"}


def caveat(settings):
    """Why the numbers cannot be compared with the paper's, for the weights this run started from."""
    pretrained = settings.get("PRETRAINED", "none")
    start = ("BiT weights cannot be downloaded where this run was made, so both networks here were trained "
             "**from scratch**" if pretrained == "none" else f"This run started from `{pretrained}`")
    text = ("**Not comparable with the paper's tables.** The paper fine-tunes BiT-M-R50x1 from ImageNet-21k "
            f"(BiT) weights at 128 px for 10,000 steps, and its numbers assume those weights. {start}, with "
            "the shorter schedule and the resolution of the settings below. The OOD sets are what the shared "
            "data folder holds: Textures is 10 of DTD's 47 classes, and MNIST, Scene15 and IntelScenes are "
            "stand-ins for SVHN and Places, not those sets. The CIFAR-10 images are JPEG re-encodings of the "
            "originals. Read the tables as a comparison of DFB with its base scores under the same conditions, "
            "not as a reproduction of the published figures.")
    return "> " + text


def read_json(path, made_by):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: it is written by {made_by}; did that stage of "
                                f"scripts/reproduce_small.sh finish?")
    return json.loads(path.read_text())


def read_results(path):
    """results.csv -> ({(method, ood set): {metric: float}}, methods in file order, OOD sets in file order)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: it is written by eval.py")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"method", "ood_dataset", *(key for key, _ in METRICS)} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: expected the columns method,id_dataset,ood_dataset,fpr95,auroc,aupr_in,"
                         f"aupr_out with at least one row; missing {sorted(missing)}")
    table = {(row["method"], row["ood_dataset"]): {key: float(row[key]) for key, _ in METRICS} for row in rows}
    methods = list(dict.fromkeys(row["method"] for row in rows))
    return table, methods, list(dict.fromkeys(row["ood_dataset"] for row in rows))


def pct(value):
    return f"{100 * value:.2f}"


def signed_pct(value):
    return f"{100 * value:+.2f}"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def setup_section(info):
    lines = ["## Setup", "", f"- Device: **{info['device']}**", f"- Command: `{info['command']}`",
             f"- Code: commit `{info['git_commit']}`; torch {info['torch']}, Python {info['python']}; "
             f"run started {info['date_utc']} UTC", ""]
    settings = info["settings"]
    lines += markdown_table(["setting", "value"], [(key, f"`{value}`" if value else "(all / unset)")
                                                   for key, value in settings.items()])
    return lines + [""]


def data_section(manifest):
    rows = [(f"{name} (ID)", entry["archive"], "CIFAR-10", ", ".join(f"{split} {count:,}" for split, count
                                                                    in entry["images"].items()))
            for name, entry in manifest["id"].items()]
    rows += [(name, entry["archive"], f"{entry['content']}; stands for {entry['stands_for']}",
              ", ".join(f"{split} {count:,}" for split, count in entry["images"].items()))
             for name, entry in manifest["ood"].items()]
    return ["## Data", "", f"Unpacked from the shared archives in `{manifest['shared']}` "
            "(`data_manifest.json`):", ""] + markdown_table(["set", "archive", "what it is", "images"], rows) + [""]


def times_section(times):
    unknown = sorted(set(times) - set(STAGES))
    if unknown:
        raise ValueError(f"stage_times.json: unknown stage(s) {unknown}; expected {list(STAGES)}")
    rows = [(stage, what, f"{times[stage]:.1f}", f"{times[stage] / 60:.2f}")
            for stage, what in STAGES.items() if stage in times]
    rows.append(("**total**", "", f"**{sum(times.values()):.1f}**", f"**{sum(times.values()) / 60:.2f}**"))
    return ["## Wall time per stage", "",
            "Seconds of wall time, start-up and data loading included; a stage resumed after an "
            "interruption counts every attempt that could record its time.", ""] + \
        markdown_table(["stage", "what", "seconds", "minutes"], rows) + [""]


def accuracy_section(cls_accuracy, dfb_accuracy):
    rows = [("classifier (K logits)", pct(cls_accuracy["top1"]), cls_accuracy["images"], "results_cls/accuracy.json"),
            ("DFB network (its K foreground logits)", pct(dfb_accuracy["top1"]), dfb_accuracy["images"],
             "results_dfb/accuracy.json")]
    return [f"## ID accuracy ({cls_accuracy['id_dataset']})", ""] + \
        markdown_table(["network", "top-1 %", "test images", "from"], rows) + [""]


def mask_section(summary, dfb_final):
    lines = ["## Pseudo masks", "",
             f"CAMs of the classifier on the training split (`{MASK_DIR}/summary.json`): scales "
             f"{summary['scales']} with flips, blur σ = {summary['sigma']}, threshold {summary['threshold']}, "
             f"{summary['resolution']}×{summary['resolution']} px, class = "
             f"{'folder label' if summary['labeled'] else 'predicted class'}.", ""]
    rows = [("images with a mask", f"{summary['images_computed']:,} computed of {summary['images_total']:,}")]
    if summary.get("images_unreadable"):  # reported by make_cam.py versions that skip undecodable files
        rows.append(("images that could not be read (no mask)", f"{summary['images_unreadable']:,}"))
    rows += [("mean foreground fraction", f"{pct(summary['mean_foreground_fraction'])} %"),
             ("masks with no foreground", f"{summary['empty_foreground']:,}"),
             ("classifier accuracy on the training split", f"{pct(summary['classifier_accuracy_on_split'])} %")]
    dense = [(key, label) for key, label in (("pixel_accuracy", "pixel accuracy"), ("foreground_iou", "foreground IoU"),
                                             ("background_iou", "background IoU")) if key in dfb_final]
    rows += [(f"DFB network on held-out training images: {label}", f"{pct(dfb_final[key])} %") for key, label in dense]
    lines += markdown_table(["statistic", "value"], rows)
    if summary["images_skipped"]:
        lines += ["", f"make_cam.py was resumed: the statistics cover the {summary['images_computed']:,} masks of its "
                      f"last run, not the {summary['images_skipped']:,} written before."]
    if dense:
        lines += ["", "The held-out figures (`runs/dfb/final_metrics.json`) compare the DFB network's dense "
                      "prediction with the pseudo masks of training images it did not train on; there are no "
                      "true masks for CIFAR-10."]
    return lines + [""]


def ood_table(ood, base_methods, cls, dfb):
    header = ["score"] + [f"classifier {name}" for _, name in METRICS] + ["DFB net alone AUROC↑"] + \
        [f"DFB-x {name}" for _, name in METRICS] + ["ΔAUROC (DFB-x − classifier)"]
    rows = []
    for method in base_methods:
        base, fused, alone = cls[method, ood], dfb[f"DFB-{method}", ood], dfb[method, ood]
        rows.append([method] + [pct(base[key]) for key, _ in METRICS] + [pct(alone["auroc"])] +
                    [pct(fused[key]) for key, _ in METRICS] + [signed_pct(fused["auroc"] - base["auroc"])])
    background = dfb[BACKGROUND, ood]
    rows.append(["Background (−z_bg)"] + [DASH] * 5 + [pct(background[key]) for key, _ in METRICS] + [DASH])
    return [f"### {ood}", ""] + markdown_table(header, rows) + [""]


def average_table(ood_names, base_methods, cls, dfb):
    def mean(table, method, key):
        return sum(table[method, ood][key] for ood in ood_names) / len(ood_names)
    rows = [[method, pct(mean(cls, method, "fpr95")), pct(mean(cls, method, "auroc")),
             pct(mean(dfb, f"DFB-{method}", "fpr95")), pct(mean(dfb, f"DFB-{method}", "auroc")),
             signed_pct(mean(dfb, f"DFB-{method}", "auroc") - mean(cls, method, "auroc"))] for method in base_methods]
    rows.append(["Background (−z_bg)", DASH, DASH, pct(mean(dfb, BACKGROUND, "fpr95")),
                 pct(mean(dfb, BACKGROUND, "auroc")), DASH])
    header = ["score", "classifier FPR95↓", "classifier AUROC↑", "DFB-x FPR95↓", "DFB-x AUROC↑", "ΔAUROC"]
    return [f"### Average over the {len(ood_names)} OOD sets", ""] + markdown_table(header, rows) + [""]


def ood_section(cls_results, dfb_results, fusion):
    cls, base_methods, ood_names = cls_results
    dfb, dfb_methods, dfb_oods = dfb_results
    if set(dfb_oods) != set(ood_names):
        raise ValueError(f"results_cls has OOD sets {ood_names} but results_dfb has {dfb_oods}: evaluate both "
                         f"networks on the same sets")
    needed = [f"DFB-{method}" for method in base_methods] + base_methods + [BACKGROUND]
    missing = [name for name in needed if name not in dfb_methods]
    if missing:
        raise ValueError(f"results_dfb/results.csv lacks the rows {missing}: is it the evaluation of a DFB checkpoint?")
    lines = ["## OOD detection", "",
             f"ID positives: the CIFAR-10 test split. All values in %. For each base score x: *classifier* = x on "
             f"the K-class classifier; *DFB net alone* = x on the K foreground logits and features of the "
             f"(K+1)-class DFB network, without the background term; *DFB-x* = x fused with the DFB network's "
             f"background logit (`{fusion}` mode, `utils/fusion.py`); ΔAUROC = DFB-x minus classifier. "
             f"*Background* = the background logit alone. Every fusion mode is in `results_dfb/results.md`.", ""]
    for ood in ood_names:
        lines += ood_table(ood, base_methods, cls, dfb)
    return lines + average_table(ood_names, base_methods, cls, dfb)


def fusion_section(selection, base_methods, fusion):
    rows = []
    for method in base_methods:
        key = f"DFB-{method}[{fusion}]"
        if key not in selection:
            raise ValueError(f"results_dfb/fusion_selection.json has no entry {key!r}: was eval.py run with "
                             f"--fusion {fusion}?")
        choice = selection[key]
        rows.append((f"DFB-{method}", f"{choice['sign']:+d}", f"{choice['temperature']:.4g}",
                     pct(choice["validation_auroc"])))
    return ["## Fusion parameters", "",
            f"Sign s and temperature T of each DFB-x (`{fusion}` mode: {FORMULAS[fusion]}), read from "
            "`results_dfb/fusion_selection.json`. eval.py chose them by the leak-free rule: the AUROC of the "
            "ID test images against the same images with their tiles randomly shuffled (a validation "
            "pseudo-OOD set), **never on any of the OOD sets above**. s = +1 means \"more background, more OOD\".",
            ""] + markdown_table(["score", "sign s", "temperature T", "validation AUROC %"], rows) + [""]


def run_figures(run_dir):
    """The figures of the run, relative to run_dir."""
    found = sorted((run_dir / "results_dfb" / "figures").glob("*.png")) + \
        sorted((run_dir / "results_cls" / "figures").glob("*.png")) + sorted((run_dir / MASK_DIR).glob("*.png"))
    return [path.relative_to(run_dir) for path in found]


def publish_figures(run_dir, figures, figures_to):
    """Copy the figures under figures_to (same sub-folders); returns where each one now is."""
    copies = []
    for figure in figures:
        target = Path(figures_to) / figure
        with atomic_path(target) as tmp:
            shutil.copyfile(run_dir / figure, tmp)
        copies.append(target)
    return copies


def figures_section(figures, out_dir):
    lines = ["## Figures", "", "Score histograms and ROC curves (`figures/` of each evaluation), the DFB network's "
             "dense predictions (`dense_maps.png`) and pseudo masks on training images (`overlays.png`):", ""]
    for path in figures:
        link = Path(os.path.relpath(path, out_dir)).as_posix()
        lines.append(f"- [{link}]({link})")
    return lines + [""]


def build_report(run_dir, out, fusion=DEFAULT_FUSION, figures_to=None):
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run_info.json", "bench.run_record info")
    times = read_json(run_dir / "stage_times.json", "bench.run_record time")
    manifest = read_json(run_dir / "data_manifest.json", "the data stage (bench.reproduce_data)")
    cls_accuracy = read_json(run_dir / "results_cls" / "accuracy.json", "eval.py (classifier)")
    dfb_accuracy = read_json(run_dir / "results_dfb" / "accuracy.json", "eval.py (DFB network)")
    selection = read_json(run_dir / "results_dfb" / "fusion_selection.json", "eval.py (DFB network)")
    summary = read_json(run_dir / MASK_DIR / "summary.json", "make_cam.py")
    dfb_final = read_json(run_dir / "runs" / "dfb" / "final_metrics.json", "train.py --task dfb")
    cls_results = read_results(run_dir / "results_cls" / "results.csv")
    dfb_results = read_results(run_dir / "results_dfb" / "results.csv")

    figures = run_figures(run_dir)
    linked = publish_figures(run_dir, figures, figures_to) if figures_to else [run_dir / path for path in figures]
    lines = ["# DFB on CIFAR-10: a small run on real data (scripts/reproduce_small.sh)", "",
             caveat(info["settings"]), ""]
    lines += setup_section(info) + data_section(manifest) + times_section(times)
    lines += accuracy_section(cls_accuracy, dfb_accuracy)
    lines += mask_section(summary, dfb_final) + ood_section(cls_results, dfb_results, fusion)
    lines += fusion_section(selection, cls_results[1], fusion) + figures_section(linked, Path(out).parent)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="OUT of scripts/reproduce_small.sh")
    parser.add_argument("--out", default=None, help="the report (default: <run_dir>/RESULTS.md)")
    parser.add_argument("--fusion", choices=sorted(FORMULAS), default=DEFAULT_FUSION,
                        help="eval.py's --fusion: the mode reported as DFB-x")
    parser.add_argument("--figures_to", default=None,
                        help="copy the figures into this folder and link the copies (for docs/)")
    args = parser.parse_args(argv)
    out = Path(args.out or Path(args.run_dir) / "RESULTS.md")
    write_text_atomic(out, build_report(args.run_dir, out, args.fusion, args.figures_to))
    print(f"[report] wrote {out}")


if __name__ == "__main__":
    main()
