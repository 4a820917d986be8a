"""The Markdown report of a scripts/reproduce_small.sh run.

    python -m reporting.results_report --run_dir runs/reproduce_small            # -> <run_dir>/RESULTS.md
    python -m reporting.results_report --run_dir runs/reproduce_small --out docs/RESULTS.md \
        --figures_to docs/results_figures                                    # publish, figures copied

Reads what the run wrote: stage_times.json and run_info.json (reporting/run_record.py),
data_manifest.json (unpack_shared_data.py), masks/train/summary.json and the masks (make_cam.py),
runs/{cls,dfb_seed<s>,dfb_<ablation>}/final_metrics.json (train.py), runs/pretrain/tin/final_metrics.json
when the run pretrained its npz (stage pretrain, scripts/pretrain.sh), and of each evaluation
(results_cls, results_dfb_seed<s>, results_dfb_<ablation>; eval.py) results.csv, accuracy.json,
fusion_selection.json, scores/<method>/<set>.npy and logits/<set>.npy.
Every table number is read from those files or is a mean / sample standard deviation over DFB
seeds, an average over OOD sets, or a difference of two of them. The one exception is the
sign diagnostic, which recomputes AUROCs of the fused scores from the saved scores and logits.
The figures are grids (one row per class or set) that fit one screen, drawn here from the saved
masks and, for the dense predictions, from dense_maps.npz of each DFB evaluation (eval.py).
"""
import argparse
import csv
import json
import os
import shutil
import statistics
from pathlib import Path

import numpy as np

from datasets.shared_archives import DEFAULT_ID, ID_SETS, OOD_SETS, OPENOOD_GROUPS
from reporting.ablation_table import variant_tables
from reporting.background_table import background_section
from reporting.openood_table import openood_section
from reporting.tables import DASH, PM, markdown_table, mean_std, pct, pct_spread, signed_pct
from utils.base.io import atomic_path, write_text_atomic
from utils.evaluate.tta import TTA_VIEWS
from utils.ood.fusion import DEFAULT_FUSION, FUSIONS
from utils.ood.metrics import auroc

# The stages of scripts/reproduce_small.sh in the order it runs them; train_dfb / eval_dfb stand for the
# train_dfb_<suffix> / eval_dfb_<suffix> of each DFB seed (seed<s>) and ablation (<name>)
STAGES = {"pretrain": "pretraining on Tiny ImageNet, the npz of PRETRAINED (scripts/pretrain.sh)",
          "data": "unpack the shared archives", "from_run": "classifier and masks copied from FROM_RUN",
          "train_cls": "classifier (train.py --task cls)",
          "make_cam": "pseudo masks (make_cam.py)", "eval_cls": "OOD evaluation, classifier (eval.py)",
          "train_dfb": "DFB network (train.py --task dfb)", "eval_dfb": "OOD evaluation, DFB network (eval.py)"}
DFB_STAGES = ("train_dfb", "eval_dfb")
# The pretrain stage's training run: scripts/pretrain.sh with OUT=<run_dir>/runs/pretrain names it tin
PRETRAIN_RUN = Path("runs") / "pretrain" / "tin"
MASK_DIR = Path("masks") / "train"
METRICS = (("fpr95", "FPR95↓"), ("auroc", "AUROC↑"), ("aupr_in", "AUPR-In↑"), ("aupr_out", "AUPR-Out↑"))
BACKGROUND, BACKGROUND_FIXED = "Background", "Background[-z_bg]"  # eval.py's names
BACKGROUND_LABEL = "Background (direction chosen on validation data)"
BACKGROUND_FIXED_LABEL = "Background[−z_bg] (one fixed direction, diagnostic)"
# A difference counts as beyond the seed spread when |mean difference| > SPREAD_RULE x the sample
# standard deviation of DFB-x over seeds
SPREAD_RULE = 2.0
GRID_EXAMPLES = 8  # examples per row of the pseudo-mask grid (the dense grids show eval.py's --dense_maps)
GRID_CLASSES = 10  # rows of the pseudo-mask grid at most

FORMULAS = {"logit": "S = S_fg − s · z_bg / T", "prob": "S = S_fg − s · T · p_bg",
            "logprob": "S = S_fg + s · T · log(1 − p_bg)"}
DENSE_KEYS = (("val_top1", "val top-1 (held-out training images)"), ("pixel_accuracy", "mask pixel accuracy"),
              ("foreground_iou", "foreground IoU"), ("background_iou", "background IoU"))


def caveat(settings):
    """Why the numbers cannot be compared with the paper's, for the weights this run started from."""
    pretrained = settings.get("PRETRAINED", "none")
    start = ("BiT weights cannot be downloaded where this run was made, so both networks here were trained "
             "**from scratch**" if pretrained == "none" else f"This run started from `{pretrained}`")
    text = ("**Not comparable with the paper's tables.** The paper fine-tunes a pretrained BiT-M-R50x1 "
            f"at 128 px for 10,000 steps (the release initialises it from BiT-M-R50x1-ILSVRC2012.npz), and its "
            f"numbers assume pretrained weights. {start}, with "
            "the model, schedule and resolution of the settings below. The OOD sets are what the shared "
            "data folder holds (the Data section says what each is and stands for): SVHN is the first 10,000 of "
            "the 26,032 images of its test split (the paper uses all of them), Textures is 10 of DTD's 47 classes, "
            "MNIST 3,000 of its 10,000 test images, MiniPlaces (and Scene15 and IntelScenes before it) real scene "
            "photos standing in for Places365, not that set, and TinyImageNet 10 images of each Tiny ImageNet class "
            "that is no CIFAR class, from its train split. The CIFAR images are JPEG re-encodings of the "
            "originals. Read the tables as a comparison of DFB with its base scores under the same conditions, "
            f"not as a reproduction of the published figures.{pretrained_on_tin_caveat(settings)}")
    return "> " + text


def pretrained_on_tin_caveat(settings):
    """A warning when a run that started from pretrained weights reports TinyImageNet, whose images come from
    the train split that PRESET=cpu_pretrained pretrains on; else ''."""
    if settings.get("PRETRAINED", "none") == "none" or "TinyImageNet" not in settings.get("OOD_SETS", "").split():
        return ""
    return (" **The TinyImageNet row is no OOD result** if these weights were pretrained on Tiny ImageNet's train "
            "split, as PRESET=cpu_pretrained's are: its images come from that split, most of them among the "
            "pretraining images.")


def read_json(path, made_by, required=True):
    path = Path(path)
    if not path.is_file():
        if not required:
            return {}
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


def ablation_names(settings):
    """The names of DFB_ABLATIONS ('name|flags' lines), in order."""
    return [line.split("|", 1)[0].strip() for line in settings.get("DFB_ABLATIONS", "").splitlines()
            if line.strip()]


class Run:
    """What one run folder holds: the classifier's evaluation, and one evaluation per finished DFB seed
    and per finished ablation (seeds and ablations still to come are listed as pending)."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.info = read_json(self.dir / "run_info.json", "reporting.run_record info")
        settings = self.info["settings"]
        self.id_name = settings.get("ID") or DEFAULT_ID  # runs made before ID was a setting: CIFAR-10
        self.id_label = ID_SETS[self.id_name][1]
        self.seeds_asked = settings.get("SEEDS", settings.get("SEED", "0")).split()
        self.seeds = [s for s in self.seeds_asked if self.evaluated(f"seed{s}")]
        if not self.seeds:
            raise FileNotFoundError(f"{self.dir}: no DFB seed is evaluated yet (results_dfb_seed<s>/results.csv "
                                    f"of SEEDS={' '.join(self.seeds_asked)}): did eval_dfb_seed<s> finish?")
        self.ablations = [name for name in ablation_names(settings) if self.evaluated(name)]
        self.pending = [f"seed {s}" for s in self.seeds_asked if s not in self.seeds] + \
            [f"ablation {name}" for name in ablation_names(settings) if name not in self.ablations]
        self.cls = read_results(self.dir / "results_cls" / "results.csv")
        self.dfb = {s: read_results(self.dir / f"results_dfb_seed{s}" / "results.csv") for s in self.seeds}
        self.base_methods, self.ood_names = self.cls[1], self.cls[2]
        for suffix in [f"seed{s}" for s in self.seeds] + self.ablations:
            self.check_dfb(suffix)

    def evaluated(self, suffix):
        return (self.dir / f"results_dfb_{suffix}" / "results.csv").is_file()

    def check_dfb(self, suffix):
        _, methods, oods = read_results(self.dir / f"results_dfb_{suffix}" / "results.csv")
        if set(oods) != set(self.ood_names):
            raise ValueError(f"results_cls has OOD sets {self.ood_names} but results_dfb_{suffix} has {oods}: "
                             f"evaluate every network on the same sets")
        needed = [f"DFB-{m}" for m in self.base_methods] + self.base_methods + [BACKGROUND]
        missing = [name for name in needed if name not in methods]
        if missing:
            raise ValueError(f"results_dfb_{suffix}/results.csv lacks the rows {missing}: is it the evaluation of "
                             f"a DFB checkpoint?")

    def background_rows(self):
        """(method, label) of the background scores every seed has: the validated direction, and the
        fixed −z_bg diagnostic where eval.py wrote it (evaluations before it existed had only −z_bg,
        then named Background)."""
        if not all(BACKGROUND_FIXED in self.dfb[s][1] for s in self.seeds):
            return [(BACKGROUND, "Background (−z_bg)")]
        return [(BACKGROUND, BACKGROUND_LABEL), (BACKGROUND_FIXED, BACKGROUND_FIXED_LABEL)]

    def dfb_values(self, method, ood, key):
        """One value per finished seed."""
        return [self.dfb[s][0][method, ood][key] for s in self.seeds]

    def dfb_average(self, method, key, oods=None):
        """Per seed, the average over the OOD sets `oods` (default: all)."""
        oods = oods or self.ood_names
        return [statistics.fmean(self.dfb[s][0][method, ood][key] for ood in oods) for s in self.seeds]

    def cls_value(self, method, ood, key):
        return self.cls[0][method, ood][key]

    def cls_average(self, method, key, oods=None):
        return statistics.fmean(self.cls_value(method, ood, key) for ood in oods or self.ood_names)

    def openood_groups(self):
        """[(group name, its OOD sets)]: near-OOD and far-OOD as OpenOOD v1.5 groups CIFAR's OOD sets, each
        set's group read from datasets/shared_archives.py's OOD_SETS; empty groups left out."""
        grouped = [(f"{group}-OOD", [ood for ood in self.ood_names if ood in OOD_SETS
                                     and OOD_SETS[ood].openood_group == group]) for group in OPENOOD_GROUPS]
        return [(name, oods) for name, oods in grouped if oods]


def portable(text):
    """`text` with the absolute paths of this checkout and of the shared folder beside it written as the
    scripts name them (relative to the checkout), so a published record names no machine's folders."""
    checkout = Path(__file__).resolve().parents[1]
    return str(text).replace(f"{checkout.parent}/shared/", "../shared/").replace(f"{checkout}/", "")


def pretrained_weights_line(run, times, cls_final):
    """The npz the run fine-tuned from: its sha256 as the classifier recorded it, and the top-1 of its
    pretraining on held-out Tiny ImageNet images when this run pretrained it (stage pretrain)."""
    npz = run.info["settings"].get("PRETRAINED", "none")
    if npz == "none":
        return []
    started = cls_final.get("initialised_from", {})
    digest = (f"sha256 `{started['sha256']}` (as `runs/cls/final_metrics.json` records it)"
              if started.get("from") == "npz" else "sha256 not recorded (`runs/cls/final_metrics.json` names no npz start)")
    record = run.dir / PRETRAIN_RUN / "final_metrics.json"
    if record.is_file():
        pretraining = json.loads(record.read_text())
        made = (f"pretrained in this run (stage `pretrain`, `{PRETRAIN_RUN}`, {pretraining['steps']:,} steps): "
                f"val top-1 **{pct(pretraining['test_top1'])} %** on the held-out images of Tiny ImageNet's train split "
                f"(`{PRETRAIN_RUN / 'final_metrics.json'}`)")
    elif "pretrain" in times:
        made = f"the stage `pretrain` ran but left no `{PRETRAIN_RUN / 'final_metrics.json'}`"
    else:
        made = "there before this run (no stage `pretrain`: its pretraining is not part of this record)"
    return [f"- Pretrained weights: `{portable(npz)}`, {made}; {digest}"]


def tta_text(mode):
    """eval.py --tta's mode as the report states it."""
    if mode == "none":
        return "none (one forward per image)"
    return (f"**{mode}** ({TTA_VIEWS[mode]}, the ID test top-1 included), applied identically to the ID test set, "
            "every OOD set and the fusion's validation images, and to the ID training images that fit the scores")


def tta_line(run):
    """Whether the evaluations averaged each image with its mirror (eval.py --tta, as each evaluation's
    accuracy.json records it; evaluations from before --tta existed had one forward per image)."""
    folders = ["results_cls"] + [f"results_dfb_{suffix}" for suffix in [f"seed{s}" for s in run.seeds] + run.ablations]
    used = {folder: read_json(run.dir / folder / "accuracy.json", "eval.py").get("tta", "none") for folder in folders}
    modes = sorted(set(used.values()))
    if len(modes) == 1:
        return [f"- Test-time augmentation (eval.py --tta, `accuracy.json` of every evaluation): {tta_text(modes[0])}"]
    listed = "; ".join(f"{mode} in {', '.join(f'`{f}`' for f, m in used.items() if m == mode)}" for mode in modes)
    return [f"- Test-time augmentation (eval.py --tta) **differs between the evaluations**, so their numbers do not "
            f"compare: {listed}"]


def setup_section(run, times, cls_final):
    info = run.info
    lines = ["## Setup", "", f"- Device: **{info['device']}**" + (f"; CPU: {info['cpu']}" if info.get("cpu") and info["cpu"] not in
                                                 info["device"] else ""),
             f"- Command: `{portable(info['command'])}`",
             f"- Code: commit `{info['git_commit']}`" + ("" if "uncommitted" in info["git_commit"] else
                                                        " (clean working tree)") +
             f"; torch {info['torch']}, Python {info['python']}; run started {info['date_utc']} UTC",
             f"- DFB seeds reported: {', '.join(run.seeds)}" +
             (f"; pending (not finished when this report was written): {', '.join(run.pending)}"
              if run.pending else "")] + pretrained_weights_line(run, times, cls_final) + tta_line(run) + [""]
    lines += markdown_table(["setting", "value"], [(key, f"`{portable(value)}`" if value else "(all / unset)")
                                                   for key, value in info["settings"].items()])
    return lines + [""]


def data_section(manifest):
    rows = [(f"{name} (ID)", entry["archive"], ID_SETS[name][1], ", ".join(f"{split} {count:,}" for split, count
                                                                    in entry["images"].items()))
            for name, entry in manifest["id"].items()]
    rows += [(name, entry["archive"], f"{entry['content']}; stands for {entry['stands_for']}",
              ", ".join(f"{split} {count:,}" for split, count in entry["images"].items()))
             for name, entry in manifest["ood"].items()]
    return ["## Data", "", f"Unpacked from the shared archives in `{portable(manifest['shared'])}` "
            "(`data_manifest.json`):", ""] + markdown_table(["set", "archive", "what it is", "images"], rows) + [""]


def variant_label(suffix):
    """'seed <s>' for dfb_seed<s>, 'ablation <name>' for dfb_<name>."""
    return f"seed {suffix[4:]}" if suffix.startswith("seed") else f"ablation {suffix}"


def stage_description(stage):
    """What a stage of stage_times.json is: a fixed stage, or train/eval_dfb_seed<s> / _<ablation>."""
    for per_variant in DFB_STAGES:
        if stage.startswith(f"{per_variant}_"):
            return f"{STAGES[per_variant]}, {variant_label(stage[len(per_variant) + 1:])}"
    if stage in STAGES and stage not in DFB_STAGES:
        return STAGES[stage]
    raise ValueError(f"stage_times.json: unknown stage {stage!r}; expected one of "
                     f"{[s for s in STAGES if s not in DFB_STAGES]} or {' / '.join(DFB_STAGES)}_<seed<s> or ablation>")


def times_section(times):
    stages = [s for s in STAGES if s in times] + [s for s in times if s not in STAGES]
    rows = [(stage, stage_description(stage), f"{times[stage]:.1f}", f"{times[stage] / 60:.2f}") for stage in stages]
    rows.append(("**total**", "", f"**{sum(times.values()):.1f}**", f"**{sum(times.values()) / 60:.2f}**"))
    return ["## Wall time per stage", "",
            "Seconds of wall time, start-up and data loading included; a stage resumed after an "
            "interruption counts every attempt that could record its time.", ""] + \
        markdown_table(["stage", "what", "seconds", "minutes"], rows) + [""]


def accuracy_section(run, cls_accuracy, cls_final, dfb_accuracy, dfb_final):
    spread = "mean ± std" if len(run.seeds) > 1 else "value"
    cls_rows = [("ID test top-1", pct(cls_accuracy["top1"]), "results_cls/accuracy.json")]
    if "val_top1" in cls_final:
        cls_rows.append(("val top-1 (held-out training images)", pct(cls_final["val_top1"]),
                         "runs/cls/final_metrics.json"))
    dfb_rows = [["ID test top-1 (K foreground logits)"] + [pct(dfb_accuracy[s]["top1"]) for s in run.seeds] +
                [pct_spread(dfb_accuracy[s]["top1"] for s in run.seeds)]]
    for key, label in DENSE_KEYS:
        if all(key in dfb_final[s] for s in run.seeds):
            dfb_rows.append([label] + [pct(dfb_final[s][key]) for s in run.seeds] +
                            [pct_spread(dfb_final[s][key] for s in run.seeds)])
    return [f"## ID accuracy ({cls_accuracy['id_dataset']}) and dense quality", "",
            f"Classifier (one network, so no seed spread; {cls_accuracy['images']:,} test images):", ""] + \
        markdown_table(["metric", "%", "from"], cls_rows) + \
        ["", f"DFB network per seed (`results_dfb_seed<s>/accuracy.json`, `runs/dfb_seed<s>/final_metrics.json`; "
             f"{spread} over seeds, sample standard deviation). The mask figures compare its dense prediction "
             f"with the pseudo masks of held-out training images; there are no true masks for {run.id_label}.", ""] + \
        markdown_table(["metric"] + [f"seed {s} %" for s in run.seeds] + [f"{spread} %"], dfb_rows) + [""]


def mask_section(summary):
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
    lines += markdown_table(["statistic", "value"], rows)
    if summary["images_skipped"]:
        lines += ["", f"make_cam.py was resumed: the statistics cover the {summary['images_computed']:,} masks of its "
                      f"last run, not the {summary['images_skipped']:,} written before."]
    return lines + [""]


def ood_table(run, ood):
    rows = []
    for method in run.base_methods:
        rows.append([f"{method} · classifier"] + [pct(run.cls_value(method, ood, key)) for key, _ in METRICS])
        rows.append([f"{method} · DFB net"] + [pct_spread(run.dfb_values(method, ood, key)) for key, _ in METRICS])
        rows.append([f"DFB-{method}"] + [pct_spread(run.dfb_values(f"DFB-{method}", ood, key)) for key, _ in METRICS])
    for method, label in run.background_rows():
        rows.append([label] + [pct_spread(run.dfb_values(method, ood, key)) for key, _ in METRICS])
    return [f"### {ood}", ""] + markdown_table(["score"] + [name for _, name in METRICS], rows) + [""]


def average_table(run):
    rows = []
    for method in run.base_methods:
        rows.append([f"{method} · classifier"] + [pct(run.cls_average(method, key)) for key, _ in METRICS])
        rows.append([f"{method} · DFB net"] + [pct_spread(run.dfb_average(method, key)) for key, _ in METRICS])
        rows.append([f"DFB-{method}"] + [pct_spread(run.dfb_average(f"DFB-{method}", key)) for key, _ in METRICS])
    for method, label in run.background_rows():
        rows.append([label] + [pct_spread(run.dfb_average(method, key)) for key, _ in METRICS])
    return [f"### Average over the {len(run.ood_names)} OOD sets", "",
            "Each seed's average over the sets, then mean ± std of those over seeds.", ""] + \
        markdown_table(["score"] + [name for _, name in METRICS], rows) + [""]


def group_table(run):
    """Mean AUROC and FPR95 over OpenOOD v1.5's groups of OOD sets, for every score."""
    groups = run.openood_groups()
    grouped = {ood for _, oods in groups for ood in oods}
    ungrouped = [ood for ood in run.ood_names if ood not in grouped]
    left_out = (f" Not grouped (no OpenOOD group in `datasets/shared_archives.py`): {', '.join(ungrouped)}."
                if ungrouped else "")
    if not groups:
        return ["### Grouped as OpenOOD v1.5 groups CIFAR's OOD sets", "", left_out.strip(), ""]
    keys = (("auroc", "AUROC↑"), ("fpr95", "FPR95↓"))
    header = ["score"] + [f"{name} {label}" for name, _ in groups for _, label in keys]
    rows = []
    for method in run.base_methods:
        rows.append([f"{method} · classifier"] + [pct(run.cls_average(method, key, oods))
                                                  for _, oods in groups for key, _ in keys])
        rows.append([f"DFB-{method}"] + [pct_spread(run.dfb_average(f"DFB-{method}", key, oods))
                                         for _, oods in groups for key, _ in keys])
    for method, label in run.background_rows():
        rows.append([label] + [pct_spread(run.dfb_average(method, key, oods)) for _, oods in groups for key, _ in keys])
    described = "; ".join(f"{name}: {', '.join(oods)}" for name, oods in groups)
    return ["### Grouped as OpenOOD v1.5 groups CIFAR's OOD sets", "",
            f"Mean over the sets of each group ({described}), per seed, then mean ± std over seeds; "
            f"to set beside OpenOOD's tables (whose sets differ: see the caveat above).{left_out}", ""] + \
        markdown_table(header, rows) + [""]


def ood_section(run, fusion):
    seeds = (f"mean ± sample standard deviation over the {len(run.seeds)} DFB seeds ({', '.join(run.seeds)})"
             if len(run.seeds) > 1 else f"one DFB seed ({run.seeds[0]}), so no spread")
    lines = ["## OOD detection", "",
             f"ID positives: the {run.id_label} test split. All values in %. For each base score x: *x · classifier* = x "
             f"on the K-class classifier (one network: **no seed spread**); *x · DFB net* = x on the K foreground "
             f"logits and features of the (K+1)-class DFB network, without the background term; *DFB-x* = x on "
             f"the DFB network fused with its background logit (`{fusion}` mode, `utils/ood/fusion.py`). DFB rows: "
             f"{seeds}. Every fusion mode is in `results_dfb_seed<s>/results.md`.", "",
             "### Background alone, AUROC↑ per OOD set", ""]
    lines += markdown_table(["score"] + list(run.ood_names),
                            [[label] + [pct_spread(run.dfb_values(method, ood, "auroc")) for ood in run.ood_names]
                             for method, label in run.background_rows()]) + [""]
    for ood in run.ood_names:
        lines += ood_table(run, ood)
    return lines + average_table(run) + group_table(run)


def beats_section(run):
    """For how many base scores DFB-x beats x (classifier; DFB net) in mean AUROC, and which wins or
    losses exceed the seed spread."""
    spread_known = len(run.seeds) > 1
    rule = (f"|mean difference| > {SPREAD_RULE:g} × the sample standard deviation of DFB-x's AUROC over the "
            f"{len(run.seeds)} seeds" if spread_known else "not assessable: one seed")
    rows = []
    for ood in run.ood_names:
        cells = [ood]
        for other in ("classifier", "DFB net"):
            wins, beyond = 0, []
            for method in run.base_methods:
                fused = run.dfb_values(f"DFB-{method}", ood, "auroc")
                reference = ([run.cls_value(method, ood, "auroc")] * len(fused) if other == "classifier"
                             else run.dfb_values(method, ood, "auroc"))
                difference = statistics.fmean(fused) - statistics.fmean(reference)
                wins += difference > 0
                _, std = mean_std(fused)
                if spread_known and abs(difference) > SPREAD_RULE * std:
                    beyond.append(f"{method} {signed_pct(difference)}")
            cells += [f"{wins} of {len(run.base_methods)}", ", ".join(beyond) or ("none" if spread_known else DASH)]
        rows.append(cells)
    return ["## Does DFB-x beat x?", "",
            "Per OOD set: for how many of the base scores the AUROC of DFB-x, averaged over seeds, is higher than "
            "that of x on the classifier, and than that of x on the DFB network's foreground (averaged over the "
            f"same seeds). Differences beyond the seed spread (rule: {rule}) are listed with their mean "
            "difference in AUROC points.", ""] + \
        markdown_table(["OOD set", "beats x · classifier", "beyond spread", "beats x · DFB net", "beyond spread"],
                       rows) + [""]


def is_choice(entry):
    return isinstance(entry, dict) and "sign" in entry and "temperature" in entry


def brief(value, max_items=3):
    """A recorded value with long lists (e.g. the paths of 500 validation images) shortened to their
    first items and their length; the full lists stay in fusion_selection.json."""
    if isinstance(value, dict):
        return {key: brief(item, max_items) for key, item in value.items()}
    if isinstance(value, list) and len(value) > max_items:
        return value[:max_items] + [f"... {len(value)} in all"]
    return value


def fusion_section(run, selections, fusion):
    header = ["score"] + [f"seed {s}: s, T (validation AUROC %)" for s in run.seeds]
    rows = []
    for method in run.base_methods:
        key = f"DFB-{method}[{fusion}]"
        cells = [f"DFB-{method}"]
        for s in run.seeds:
            choice = selections[s].get(key)
            if not is_choice(choice):
                raise ValueError(f"results_dfb_seed{s}/fusion_selection.json has no entry {key!r} with a sign and a "
                                 f"temperature: was eval.py run with --fusion {fusion}?")
            value = choice.get("validation_auroc")
            cells.append(f"{choice['sign']:+d}, {choice['temperature']:.4g}" +
                         (f" ({pct(value)})" if isinstance(value, (int, float)) else ""))
        rows.append(cells)
    if all(BACKGROUND in selections[s] for s in run.seeds):
        rows.append(["Background alone (s only)"] + [f"{selections[s][BACKGROUND]['sign']:+d} "
                                                     f"({pct(selections[s][BACKGROUND]['validation_auroc'])})"
                                                     for s in run.seeds])
    # What eval.py records beside the choices (e.g. which images the choice was validated on)
    recorded = []
    for s in run.seeds:
        extra = {key: value for key, value in selections[s].items() if not is_choice(value) and key != BACKGROUND}
        fields = sorted({field for value in selections[s].values() if is_choice(value) for field in value}
                        - {"sign", "temperature", "validation_auroc"})
        if extra or fields:
            recorded.append(f"- seed {s}: " + "; ".join([f"`{key}` = `{json.dumps(brief(value))}`" for key, value in
                                                         extra.items()] + [f"per choice also `{f}`" for f in fields]))
    lines = ["## Fusion parameters", "",
             f"Sign s and temperature T of each DFB-x (`{fusion}` mode: {FORMULAS[fusion]}), per seed, read from "
             "`results_dfb_seed<s>/fusion_selection.json`. eval.py chooses them on validation data, **never on any "
             "of the OOD sets above**. s = +1 counts a large background logit as evidence of OOD, s = −1 as "
             "evidence of ID; neither direction is assumed (the paper says only that the (K+1)-th class captures "
             "the ID background and gives a background OOD score).", ""]
    lines += markdown_table(header, rows) + [""]
    if recorded:
        lines += ["What `fusion_selection.json` records besides the choices:", ""] + recorded + [""]
    return lines


def sign_diagnostic(run, selections, fusion):
    """For each OOD set and method, the sign the test set itself would have preferred at the chosen T
    (a diagnostic of the validation rule, never used for selection)."""
    fuse = FUSIONS[fusion]
    rows, agreed, total, missing = [], 0, 0, []
    for method in run.base_methods:
        cells = [f"DFB-{method}"]
        for ood in run.ood_names:
            plus, minus, agree = [], [], 0
            for s in run.seeds:
                folder = run.dir / f"results_dfb_seed{s}"
                id_name = read_json(folder / "accuracy.json", "eval.py")["id_dataset"]
                paths = [folder / "scores" / method / f"{id_name}.npy", folder / "scores" / method / f"{ood}.npy",
                         folder / "logits" / f"{id_name}.npy", folder / "logits" / f"{ood}.npy"]
                absent = [str(p.relative_to(run.dir)) for p in paths if not p.is_file()]
                if absent:
                    missing += absent
                    continue
                id_fg, ood_fg, id_logits, ood_logits = (np.load(p) for p in paths)
                choice = selections[s][f"DFB-{method}[{fusion}]"]
                value = {sign: auroc(fuse(id_fg, id_logits, choice["temperature"], sign),
                                     fuse(ood_fg, ood_logits, choice["temperature"], sign)) for sign in (1, -1)}
                plus.append(value[1])
                minus.append(value[-1])
                preferred = 1 if value[1] >= value[-1] else -1
                agree += preferred == choice["sign"]
            if not plus:
                cells.append(DASH)
                continue
            agreed += agree
            total += len(plus)
            cells.append(f"{pct(statistics.fmean(plus))} / {pct(statistics.fmean(minus))}; agreed {agree}/{len(plus)}")
        rows.append(cells)
    lines = ["## Diagnostic: which sign would each OOD set have preferred?", "",
             "**A diagnostic only, not a selection.** For each DFB-x and OOD set: the AUROC % of the fused score "
             "with s = +1 / s = −1 at the temperature eval.py chose (mean over seeds), and in how many seeds the "
             "sign chosen on validation data is the one that test set prefers. Recomputed here from "
             "`scores/<method>/<set>.npy` and `logits/<set>.npy` of each seed.", ""]
    lines += markdown_table(["score"] + [f"{ood}: +1 / −1" for ood in run.ood_names], rows) + [""]
    if total:
        lines += [f"The validation sign agreed with the test set's preference in {agreed} of {total} cases "
                  f"(score × OOD set × seed).", ""]
    if missing:
        lines += [f"Saved arrays missing (cells shown as {DASH}): {', '.join(sorted(set(missing))[:6])}"
                  + (" …" if len(set(missing)) > 6 else ""), ""]
    return lines


def ablation_section(run, fusion):
    first = run.seeds_asked[0]
    if not run.ablations or first not in run.seeds:
        return []
    variants = [(f"full DFB_FLAGS (seed {first})", f"seed{first}")] + [(name, name) for name in run.ablations]
    flags = {line.split("|", 1)[0].strip(): line.split("|", 1)[1].strip()
             for line in run.info["settings"].get("DFB_ABLATIONS", "").splitlines() if "|" in line}
    return ["## Ablations of the DFB stage", "",
            f"Each variant is the DFB stage trained with seed {first} and its own train.py flags instead of "
            "DFB_FLAGS (`runs/dfb_<name>`, `results_dfb_<name>`); the first row is the full stage with that seed. "
            "One seed each: differences smaller than the seed spread of the tables above are not evidence "
            "(`python -m reporting.ablation_table` prints the same tables).", ""] + \
        variant_tables(run.dir, variants, fusion) + \
        [f"- `{name}`: `{flags.get(name, '')}`" for name in run.ablations] + [""]


def repo_path(path):
    """A path of the settings (relative to the checkout, where the script runs) as an absolute path."""
    path = Path(path)
    return path if path.is_absolute() else Path(__file__).resolve().parents[1] / path


def folder_examples(root, per_row, mask_root):
    """{class folder: [(image, mask path)]} of the first per_row images of each class folder that have a mask."""
    from PIL import Image

    from datasets.folder import is_image_file, mask_path
    rows = {}
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        files = [p for p in sorted(folder.iterdir()) if is_image_file(p) and mask_path(mask_root, p).is_file()]
        rows[folder.name] = [(np.asarray(Image.open(p).convert("RGB")), mask_path(mask_root, p)) for p in files[:per_row]]
    return {name: examples for name, examples in rows.items() if examples}


def pseudo_mask_grid(run, path):
    """Pseudo masks of the first training images of each class, one row per class (at most GRID_CLASSES)."""
    from PIL import Image
    mask_root = run.dir / MASK_DIR
    train = repo_path(run.info["settings"]["DATA_DIR"]) / run.id_name / "train"
    examples = folder_examples(train, GRID_EXAMPLES, mask_root)
    num_classes = sum(1 for folder in train.iterdir() if folder.is_dir())
    # at most GRID_CLASSES rows, evenly spaced over the classes: 100 rows would not fit one screen
    step = -(-len(examples) // GRID_CLASSES)
    shown_classes = list(examples)[::step]
    rows = [(name, [(image, np.asarray(Image.open(mask))) for image, mask in examples[name]]) for name in shown_classes]
    from utils.figures.plots import save_overlay_grid
    which = f", {len(rows)} of {num_classes} classes (every {step}th)" if step > 1 else ""
    return save_overlay_grid(rows, num_classes, path, title=f"pseudo masks (make_cam.py), training images{which}")


def dense_grid(run, path, suffix):
    """The dense prediction of the DFB network runs/dfb_<suffix> (a seed or an ablation) on a few images of the
    ID test split and of every OOD set, as its evaluation saved them (results_dfb_<suffix>/dense_maps.npz)."""
    from utils.evaluate.dense_maps import DENSE_MAPS_FILE, load_dense_maps
    from utils.figures.plots import save_overlay_grid
    folder = run.dir / f"results_dfb_{suffix}"
    if not (folder / DENSE_MAPS_FILE).is_file():
        raise FileNotFoundError(f"{folder / DENSE_MAPS_FILE} not found: eval.py writes it when it evaluates a DFB "
                                f"network (with --dense_maps > 0), evaluations of older code did not; evaluate again "
                                f"(delete {run.dir / '.stages' / f'eval_dfb_{suffix}.done'} and rerun the script) "
                                f"or leave the grids out (--no_grids)")
    maps, num_classes = load_dense_maps(folder / DENSE_MAPS_FILE)
    id_test = read_json(folder / "accuracy.json", "eval.py (DFB network)")["id_dataset"]
    rows = [(f"{run.id_label} test" if name == id_test else name, examples) for name, examples in maps]
    return save_overlay_grid(rows, num_classes, path,
                             title=f"dense prediction of the DFB network ({variant_label(suffix)}); dimmed = background")


def run_figures(run_dir):
    """The figures of the run, relative to run_dir."""
    found = [path for folder in sorted(run_dir.glob("results_*")) for path in sorted((folder / "figures").glob("*.png"))]
    found += sorted((run_dir / MASK_DIR).glob("*.png"))
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


def figures_section(grids, figures, out_dir):
    lines = ["## Figures", ""]
    for caption, path in grids:
        link = Path(os.path.relpath(path, out_dir)).as_posix()
        lines += [f"{caption}:", "", f"![{caption}]({link})", ""]
    lines += ["Every figure of the run: score histograms and ROC curves (`figures/` of each evaluation), the dense "
              "predictions (`dense_maps.png`, one row per set) and pseudo masks (`overlays.png`):", ""]
    for path in figures:
        link = Path(os.path.relpath(path, out_dir)).as_posix()
        lines.append(f"- [{link}]({link})")
    return lines + [""]


def build_report(run_dir, out, fusion=DEFAULT_FUSION, figures_to=None, grids=True):
    run = Run(run_dir)
    times = read_json(run.dir / "stage_times.json", "reporting.run_record time")
    manifest = read_json(run.dir / "data_manifest.json", "the data stage (unpack_shared_data.py)")
    cls_accuracy = read_json(run.dir / "results_cls" / "accuracy.json", "eval.py (classifier)")
    cls_final = read_json(run.dir / "runs" / "cls" / "final_metrics.json", "train.py --task cls", required=False)
    summary = read_json(run.dir / MASK_DIR / "summary.json", "make_cam.py")
    dfb_accuracy = {s: read_json(run.dir / f"results_dfb_seed{s}" / "accuracy.json", "eval.py (DFB network)")
                    for s in run.seeds}
    dfb_final = {s: read_json(run.dir / "runs" / f"dfb_seed{s}" / "final_metrics.json", "train.py --task dfb")
                 for s in run.seeds}
    selections = {s: read_json(run.dir / f"results_dfb_seed{s}" / "fusion_selection.json", "eval.py (DFB network)")
                  for s in run.seeds}

    drawn = []
    if grids:
        target = Path(figures_to) if figures_to else run.dir
        first = f"seed{run.seeds[0]}"
        drawn = [("Pseudo masks, one row per class", pseudo_mask_grid(run, target / "grid_pseudo_masks.png")),
                 ("Dense predictions, one row per set", dense_grid(run, target / "grid_dense_maps.png", first))]
        drawn += [(f"Dense predictions of the ablation {name}, one row per set",
                   dense_grid(run, target / f"grid_dense_maps_{name}.png", name)) for name in run.ablations]
    figures = run_figures(run.dir)
    linked = publish_figures(run.dir, figures, figures_to) if figures_to else [run.dir / path for path in figures]
    lines = [f"# DFB on {run.id_label}: a small run on real data (scripts/reproduce_small.sh)", "",
             caveat(run.info["settings"]), ""]
    lines += setup_section(run, times, cls_final) + data_section(manifest) + times_section(times)
    lines += accuracy_section(run, cls_accuracy, cls_final, dfb_accuracy, {s: dfb_final[s] for s in run.seeds})
    lines += mask_section(summary) + ood_section(run, fusion) + openood_section(run, cls_accuracy)
    lines += background_section(run, dfb_accuracy[run.seeds[0]]["id_dataset"]) + beats_section(run)
    lines += fusion_section(run, selections, fusion) + sign_diagnostic(run, selections, fusion)
    lines += ablation_section(run, fusion)
    lines += figures_section(drawn, linked, Path(out).parent)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="OUT of scripts/reproduce_small.sh")
    parser.add_argument("--out", default=None, help="the report (default: <run_dir>/RESULTS.md)")
    parser.add_argument("--fusion", choices=sorted(FORMULAS), default=DEFAULT_FUSION,
                        help="eval.py's --fusion: the mode reported as DFB-x")
    parser.add_argument("--figures_to", default=None,
                        help="copy the figures into this folder and link the copies (for docs/)")
    parser.add_argument("--no_grids", action="store_true",
                        help="leave out the grid figures (they need the data folder and eval.py's dense_maps.npz)")
    args = parser.parse_args(argv)
    out = Path(args.out or Path(args.run_dir) / "RESULTS.md")
    write_text_atomic(out, build_report(args.run_dir, out, args.fusion, args.figures_to, not args.no_grids))
    print(f"[report] wrote {out}")


if __name__ == "__main__":
    main()
