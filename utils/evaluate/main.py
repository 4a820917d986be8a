"""Stage 4 of DFB, what `eval.py` runs: OOD evaluation of a cls or dfb checkpoint.

1. Image-level logits and pooled features of the ID train set, the ID test set and every
   OOD set, in fp32 by default, of one forward per image, (--tta flip) the mean over the image
   and its mirror or (--tta flip_translate) airbench's six-view average, for every set alike
   (cached under <logdir>/cache/, keyed by the checkpoint's bytes, the images' bytes, the
   resolution, the precision and the test-time augmentation, so a new checkpoint never reuses
   stale features).
2. Every post-hoc score of utils/ood/scores.py on the K foreground logits and the pooled feature;
   the fitted ones (ViM, KNN, ReAct, Mahalanobis) on the ID training images.
3. For a dfb checkpoint: the background score and every DFB fusion of every score. Sign and
   temperature are chosen on held-out ID TRAINING images (the checkpoint's `holdout_samples`,
   which the dfb network never trained on, else a seeded slice of the training split) against
   patch-shuffled copies of them: never on the ID test images nor on an OOD set, so the choice
   does not change when either changes. The held-out images are left out of the fitted
   scores' statistics. `fusion_selection.json` records the choices and the images.
4. results.csv, results.md (with the score settings used), accuracy.json, logits/, scores/,
   figures/; for a dfb checkpoint dense_maps.npz (utils/evaluate/dense_maps.py); with --save_detector,
   detector.pt: one fused score, its fitted statistics, sign, T and the threshold that keeps 95 % of
   the held-out ID images, for score.py (utils/ood/detector.py).
"""
import argparse
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.loading import load_network
from utils.base import distributed
from utils.base.checkpoint import file_digest
from utils.base.distributed import RunContext, start_run
from utils.base.io import atomic_path, remove_stale_temporaries, save_npy_atomic, write_text_atomic
from utils.evaluate.dense import foreground_layout
from utils.evaluate.dense_maps import DENSE_MAPS_FILE, predict_dense_maps, save_dense_maps
from utils.evaluate.engine import extract, top1, with_tta
from utils.evaluate.sets import FUSION_ID, VALIDATION_OOD, EvalSets, PatchShuffled, dataset_digest, open_sets
from utils.evaluate.tta import TTA_VIEWS
from utils.ood.detector import save_detector
from utils.ood.fusion import (apply_fusions, background_score, fusion_name, select_all_fusions,
                              select_background_sign)
from utils.ood.metrics import ood_metrics
from utils.ood.scores import IDTrainStats, compute_all_scores, make_scores, odin

CSV_COLUMNS = ["method", "id_dataset", "ood_dataset", "fpr95", "auroc", "aupr_in", "aupr_out"]
BACKGROUND, BACKGROUND_FIXED = "Background", "Background[-z_bg]"
BEST_DETECTOR = "best"  # --save_detector best
PLOTTED_METHODS = ("MSP", "Energy", "MaxLogit", BACKGROUND, "DFB-MSP", "DFB-Energy", "DFB-MaxLogit")


def run(args: argparse.Namespace) -> dict | None:
    """Evaluate --model_path; returns rows, accuracy, selection and the files written on the main
    process, None on the others."""
    # eval.py defaults to fp32 (--amp none): bf16 keeps 8 bits of mantissa, enough to move logits
    # and pooled features by ~1e-2 and to reorder near-tied scores, i.e. to change the reported
    # metrics. The trunk's features feed KNN / ViM / Mahalanobis, so a head-only fp32 would not do.
    ctx = start_run(args.device, args.amp)
    model, checkpoint, task, head_size = load_network(args.model_path, task=args.task, head_size=args.head_size,
                                                      model_name=args.model)
    num_classes = head_size - 1 if task == "dfb" else head_size
    if args.fusion_val_ood and task != "dfb":
        raise ValueError(f"--fusion_val_ood chooses the DFB fusions of a dfb checkpoint, but {args.model_path} is a "
                         f"'{task}' checkpoint")
    if args.save_detector and task != "dfb":
        raise ValueError(f"--save_detector needs a dfb checkpoint (the detector fuses its background logit), "
                         f"but {args.model_path} is a '{task}' checkpoint")
    model.to(ctx.device).eval()
    resolution = args.resolution or checkpoint["resolution"] or 128
    out_dir = Path(args.logdir)
    checkpoint_key = file_digest(args.model_path)
    if ctx.is_main:
        remove_stale_temporaries(out_dir)  # of an eval that was killed while writing

    sets = open_sets(args, task, checkpoint, resolution, num_classes, ctx)
    outputs = extract_sets(sets, model, checkpoint_key, resolution, num_classes, out_dir, args, ctx)
    distributed.barrier()
    if not ctx.is_main:
        distributed.cleanup()
        return None
    scored = score_sets(outputs, sets, task, num_classes, model, args, ctx)
    results = write_report(scored, outputs, sets, task, out_dir, args, ctx)

    if task == "dfb" and args.layout_images > 0:
        results["written"].append(out_dir / "dense_layout.json")
        write_dense_layout(results["written"][-1], model, sets.shown_sets(), num_classes, resolution, args, ctx)
    if task == "dfb" and args.dense_maps > 0:
        maps = predict_dense_maps(model, sets.shown_sets(), resolution, ctx.device, ctx.amp, args.dense_maps)
        results["written"] += [out_dir / DENSE_MAPS_FILE, out_dir / "figures" / "dense_maps.png"]
        save_dense_maps(results["written"][-2], maps, num_classes)
        draw_dense_maps(maps, num_classes, results["written"][-1])
    if args.save_detector:
        results["written"].append(out_dir / "detector.pt")
        write_detector(results["written"][-1], args, model, checkpoint, checkpoint_key, sets.id_train.classes,
                       resolution, scored, ctx)
    remove_stale_outputs(out_dir, results["written"])
    distributed.cleanup()
    return results


def extract_sets(sets: EvalSets, model, checkpoint_key: str, resolution: int, num_classes: int, out_dir: Path,
                 args, ctx: RunContext) -> dict:
    """Logits and pooled features of every set of the plan, from the cache when its key matches;
    every set through the same network, so --tta applies to all of them alike."""
    network = with_tta(model, args.tta)
    outputs = {}
    for name, dataset in sets.plan:
        # ODIN's perturbed pass for the scored sets only (the training set only fits other scores)
        odin_setting = ((args.odin_temperature, 2 * args.odin_epsilon, num_classes)
                        if args.odin_epsilon > 0 and name != sets.id_train_name else None)
        key = cache_key(checkpoint_key, dataset, sets.digests[name], resolution, ctx.amp, odin_setting, args.tta)
        outputs[name], hit = cached_extract(out_dir / "cache", name, key, lambda: extract(
            network, dataset, resolution, ctx.device, args.batch, ctx.amp, args.workers, ctx.rank, ctx.world_size,
            desc=name, odin=odin_setting))
        if ctx.is_main:
            print(f"[eval] {name}: {'cached' if hit else 'extracted'} logits {outputs[name]['logits'].shape}")
    return outputs


def cache_key(checkpoint_key: str, dataset, digests: list[str], resolution: int, amp: str, odin_setting,
              tta: str) -> str:
    """What the extracted outputs of a set depend on: the checkpoint's bytes, the images (paths,
    labels, bytes), the resolution, the precision, the patch shuffling, ODIN's perturbation and
    the test-time augmentation."""
    source = dataset.dataset if isinstance(dataset, PatchShuffled) else dataset
    recipe = f"{checkpoint_key}|{dataset_digest(source, digests)}|{resolution}|{amp}|{type(dataset).__name__}"
    if isinstance(dataset, PatchShuffled):
        recipe += f"|grid{dataset.grid}|seed{dataset.seed}"
    if odin_setting is not None:
        recipe += f"|odin{odin_setting[0]}|{odin_setting[1]}"
    if tta != "none":  # (so the caches written before --tta existed, all single-view, stay valid)
        recipe += f"|tta-{tta}"
    return hashlib.sha256(recipe.encode()).hexdigest()


def cached_extract(cache_dir, name, key, compute):
    """Load <cache_dir>/<name>-<key>.npz if present and readable, else compute and store it (rank 0)."""
    path = Path(cache_dir) / f"{name}-{key[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path) as stored:
                return {k: stored[k] for k in stored.files}, True
        except (OSError, ValueError, EOFError) as error:  # damaged outside our atomic writes
            print(f"[eval] cache {path} is unreadable ({error}); computing it again")
    outputs = compute()
    if distributed.is_main_process():
        with atomic_path(path) as tmp:
            np.savez(tmp, **outputs)
    return outputs, False


def score_overrides(args):
    """Hyper-parameters of the scores from the flags; ODIN's epsilon is applied by extract()."""
    return {"ODIN": {"temperature": args.odin_temperature, "epsilon": args.odin_epsilon},
            "Energy": {"temperature": args.energy_temperature}, "KNN": {"k": args.knn_k},
            "ReAct": {"percentile": args.react_percentile}}


@dataclass
class ScoredSets:
    """What score_sets computed from the extracted outputs (nothing of it is written yet)."""
    accuracy: dict  # top-1 of the K foreground logits on the ID test set (flip-averaged with --tta flip)
    scores: dict  # method -> set name -> one score per image (higher = more ID)
    rows: list[dict]  # the metrics of every method on every OOD set (results.csv's rows)
    selection: dict  # dfb: the chosen sign and T of every fusion and the images that chose them; {} for cls
    registry: dict  # the score objects, by name, with their hyper-parameters
    fit_stats: IDTrainStats  # the ID training rows the fitted scores were fitted on


def score_sets(outputs, sets: EvalSets, task, num_classes, model, args, ctx: RunContext) -> ScoredSets:
    """Scores, fusions and metrics. The scores are fitted on sets.fit_rows of the ID training set
    (all but the held-out fusion images); sets.selection_images choose the fusions (dfb)."""
    id_test_name, ood_names, fit_rows = sets.id_test_name, sets.ood_names, sets.fit_rows
    test = outputs[id_test_name]
    accuracy = {"id_dataset": id_test_name, "top1": top1(test["logits"][:, :num_classes], test["labels"]),
                "images": int(len(test["labels"])), "tta": args.tta}
    weight, bias = (t.float().cpu().numpy() for t in model.head_parameters())
    train = outputs[sets.id_train_name]
    fit_stats = IDTrainStats(features=train["features"][fit_rows], logits=train["logits"][fit_rows, :num_classes],
                             labels=train["labels"][fit_rows], head_weight=weight[:num_classes],
                             head_bias=bias[:num_classes])
    scored_sets = [id_test_name, *ood_names] + ([FUSION_ID, VALIDATION_OOD] if task == "dfb" else [])
    test_sets = {name: (outputs[name]["logits"][:, :num_classes], outputs[name]["features"]) for name in scored_sets}
    registry = make_scores(**score_overrides(args))
    scores = compute_all_scores(fit_stats, test_sets, device=ctx.device, scores=registry)
    if args.odin_epsilon > 0:  # ODIN with its input perturbation replaces temperature scaling alone
        scores["ODIN"] = {name: odin(outputs[name]["odin_logits"], args.odin_temperature) for name in scored_sets}
    selection = {}
    if task == "dfb":
        scores, selection = add_dfb_scores(scores, outputs, scored_sets, args.fusion)
        selection["validation_images"] = sets.selection_images
        selection["tta"] = args.tta  # the validation images were forwarded as the test sets were
    rows = [{"method": method, "id_dataset": id_test_name, "ood_dataset": ood,
             **ood_metrics(per_set[id_test_name], per_set[ood])}
            for method, per_set in scores.items() for ood in ood_names]
    return ScoredSets(accuracy, scores, rows, selection, registry, fit_stats)


def write_report(scored: ScoredSets, outputs, sets: EvalSets, task, out_dir, args, ctx: RunContext) -> dict:
    """logits/, accuracy.json, score_settings.json, fusion_selection.json (dfb), scores/,
    results.csv, results.md and figures/; returns rows, accuracy, selection and the files written."""
    id_test_name, ood_names = sets.id_test_name, sets.ood_names
    written = []

    def save_array(path, array):
        save_npy_atomic(path, array.astype(np.float32))
        written.append(path)

    for name in [sets.id_train_name, id_test_name, *ood_names]:
        save_array(out_dir / "logits" / f"{name}.npy", outputs[name]["logits"])
    write_text_atomic(out_dir / "accuracy.json", json.dumps(scored.accuracy, indent=2) + "\n")
    settings = {name: score.hyperparameters() for name, score in scored.registry.items()}
    write_text_atomic(out_dir / "score_settings.json", json.dumps(settings, indent=2) + "\n")
    if task == "dfb":
        write_text_atomic(out_dir / "fusion_selection.json", json.dumps(scored.selection, indent=2) + "\n")
        written.append(out_dir / "fusion_selection.json")
    for method, per_set in scored.scores.items():
        for name in [id_test_name, *ood_names]:
            save_array(out_dir / "scores" / method / f"{name}.npy", per_set[name])
    notes = settings_notes(settings, args, ctx.amp, len(sets.fit_rows), sets.selection_images)
    # DFB-<m>[<default mode>] is DFB-<m> under its explicit name: results.csv keeps both, the table one
    repeats = ({fusion_name(method, args.fusion) for method in scored.registry} & set(scored.scores)
               if task == "dfb" else set())
    if repeats:
        notes.append(f"DFB-<method> is the {args.fusion} fusion; results.csv and scores/ also hold it as "
                     f"DFB-<method>[{args.fusion}].")
    write_results(out_dir, scored.rows, ood_names, scored.accuracy, notes, leave_out=repeats)
    written += draw_figures(out_dir, scored.scores, id_test_name, ood_names)
    return {"rows": scored.rows, "accuracy": scored.accuracy, "selection": scored.selection, "written": written}


def write_detector(path, args, model, checkpoint, checkpoint_key, classes, resolution, scored: ScoredSets,
                   ctx: RunContext):
    """detector.pt of DFB-<args.save_detector> in the --fusion mode, from this run's own choices:
    the fitted statistics of the same ID training rows, the sign and T of fusion_selection.json,
    and a threshold set on the held-out ID images that chose them (never a test or OOD set)."""
    mode = args.fusion
    registry, id_train, selection = scored.registry, scored.fit_stats, scored.selection
    method = args.save_detector
    if method == BEST_DETECTOR:
        method = best_detector_method(selection, registry, mode, args.odin_epsilon)
    score = registry[method]
    # fitting is deterministic: the state the reported scores used, fitted once more to be stored
    fitted = score.fit(id_train, ctx.device)
    choice = selection[fusion_name(method, mode)]
    spec = save_detector(path, model_path=args.model_path, checkpoint_digest=checkpoint_key, model=model,
                         resolution=resolution, half_stride=checkpoint["half_stride"], classes=classes, amp=ctx.amp,
                         score=score, fitted=fitted, fitted_images=len(id_train.features), mode=mode,
                         choice=(choice["sign"], choice["temperature"], choice["validation_auroc"]),
                         heldout_fused=scored.scores[fusion_name(method)][FUSION_ID],
                         heldout_images=selection["validation_images"],
                         background_sign=selection[BACKGROUND]["sign"], tta=args.tta)
    print(f"[eval] detector {fusion_name(method)} ({mode} fusion, threshold {spec['threshold']['value']:.6g}: keeps "
          f"{100 * spec['threshold']['kept_fraction']:.1f} % of {len(scored.scores[fusion_name(method)][FUSION_ID])} "
          f"held-out ID images): {path}; apply it with score.py --detector {path} --images ...")


def best_detector_method(selection, registry, mode, odin_epsilon) -> str:
    """The base score whose DFB fusion (in `mode`) has the highest validation AUROC; the first in
    the registry's order on a tie. ODIN with input perturbation is left out (score.py does not
    perturb images)."""
    candidates = [m for m in registry if not (m == "ODIN" and odin_epsilon > 0)]
    method = max(candidates, key=lambda m: selection[fusion_name(m, mode)]["validation_auroc"])
    print(f"[eval] --save_detector {BEST_DETECTOR}: {fusion_name(method)} has the highest validation AUROC "
          f"({100 * selection[fusion_name(method, mode)]['validation_auroc']:.2f} %) of the {mode} fusions")
    return method


def remove_stale_outputs(out_dir, written):
    """Delete the logits, scores and figures that an earlier run with other sets or another
    task left in `out_dir`, so that every file there comes from this run."""
    written = set(written)
    stale = [path for pattern in ("logits/*.npy", "scores/*/*.npy", "figures/*.png",
                                                 "fusion_selection.json", "detector.pt", "dense_layout.json",
                                                 DENSE_MAPS_FILE)
             for path in out_dir.glob(pattern) if path not in written]
    for path in stale:
        path.unlink()
    for folder in (out_dir / "scores").glob("*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if stale:
        print(f"[eval] removed {len(stale)} files of an earlier run from {out_dir} (e.g. {stale[0]})")


def add_dfb_scores(scores, outputs, scored_sets, default_mode):
    """The background score in the direction chosen on validation data ('Background'; the fixed
    -z_bg as the diagnostic 'Background[-z_bg]') and every DFB fusion of every base score
    ('DFB-<m>' for the default mode, 'DFB-<m>[<mode>]' for each mode), sign and T chosen on the
    held-out ID training images against the validation OOD set."""
    logits = {name: outputs[name]["logits"] for name in scored_sets}
    choices = select_all_fusions({m: per_set[FUSION_ID] for m, per_set in scores.items()}, logits[FUSION_ID],
                                 {m: per_set[VALIDATION_OOD] for m, per_set in scores.items()}, logits[VALIDATION_OOD])
    background = select_background_sign(logits[FUSION_ID], logits[VALIDATION_OOD])
    combined = {**scores,
                BACKGROUND: {name: background_score(logits[name], background.sign) for name in scored_sets},
                BACKGROUND_FIXED: {name: background_score(logits[name]) for name in scored_sets}}
    combined.update(apply_fusions(scores, logits, choices, default_mode))
    selection = {BACKGROUND: {"sign": background.sign, "validation_auroc": background.auroc}}
    selection.update({fusion_name(method, mode): {"sign": choice.sign, "temperature": choice.temperature,
                                                  "validation_auroc": choice.auroc}
                      for (method, mode), choice in choices.items()})
    return combined, selection


def settings_notes(settings, args, amp, fitted_images, selection_images):
    """The lines under the results table that say how its numbers were made."""
    odin_kind = ("with input perturbation" if args.odin_epsilon > 0
                 else "temperature scaling only, as the official DFB evaluation")
    per_method = "; ".join(f"{name} " + ", ".join(f"{key}={value}" for key, value in values.items())
                           for name, values in settings.items() if values)
    lines = [f"Score settings: {per_method} (ODIN: {odin_kind}). Fitted scores (ViM, KNN, ReAct, Mahalanobis) "
             f"fitted on {fitted_images} ID training images. Logits and features in "
             f"{'fp32' if amp in (None, 'none') else amp}. FPR95: the official rule (ID recall closest to 0.95).",
             tta_note(args.tta, selection_images is not None)]
    if selection_images is not None:
        against = (f"the validation OOD folder {args.fusion_val_ood} (never evaluated)" if args.fusion_val_ood
                   else f"their {args.shuffle_grid}x{args.shuffle_grid} patch-shuffled copies")
        lines.append(f"DFB sign and T, and the direction of Background, chosen on {selection_images['count']} "
                     f"held-out ID training images ({selection_images['source']}) against {against} "
                     f"(fusion_selection.json), never on the test sets. Background[-z_bg]: the background logit in "
                     f"one fixed direction, a diagnostic.")
    return lines


def tta_note(tta, has_validation_images):
    """The line of results.md that says how the images were averaged (accuracy.json holds it too)."""
    if tta == "none":
        return "Test-time augmentation: none (one forward per image)."
    validation = ", and to the fusions' validation images" if has_validation_images else ""
    return (f"Test-time augmentation: {tta} ({TTA_VIEWS[tta]}), applied identically to the ID training images that "
            f"fit the scores, the ID test set (its top-1 above included) and every OOD set{validation}.")


def write_results(out_dir, rows, ood_names, accuracy, notes=(), leave_out=()):
    """results.csv with every row; results.md (also printed) without the methods of `leave_out`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.6f}" if isinstance(value, float) else value) for key, value in row.items()})
    write_text_atomic(out_dir / "results.csv", buffer.getvalue())
    shown = [row for row in rows if row["method"] not in leave_out]
    table = markdown_table(shown, ood_names, accuracy) + "".join(f"\n{line}\n" for line in notes)
    write_text_atomic(out_dir / "results.md", table)
    print(table)
    print(f"[eval] wrote {out_dir / 'results.csv'}, results.md, accuracy.json, logits/, scores/, figures/")


def markdown_table(rows, ood_names, accuracy):
    """One row per method: FPR95 / AUROC (%) per OOD set and their average."""
    by_method = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[row["ood_dataset"]] = row
    header = ["method"] + [f"{name} FPR95↓ / AUROC↑" for name in ood_names] + ["average FPR95↓ / AUROC↑"]
    lines = [f"ID: {accuracy['id_dataset']}, top-1 {100 * accuracy['top1']:.2f} % ({accuracy['images']} images)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, per_ood in by_method.items():
        cells = [f"{100 * per_ood[n]['fpr95']:.2f} / {100 * per_ood[n]['auroc']:.2f}" for n in ood_names]
        fpr = np.mean([per_ood[n]["fpr95"] for n in ood_names])
        auc = np.mean([per_ood[n]["auroc"] for n in ood_names])
        lines.append("| " + " | ".join([method, *cells, f"{100 * fpr:.2f} / {100 * auc:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def write_dense_layout(path, model, named_datasets, num_classes, resolution, args, ctx: RunContext):
    """dense_layout.json: per set, how much the dense network's foregrounds are one shared blob
    (utils.evaluate.dense.blob_scores on --layout_images images of each set)."""
    layout = {name: foreground_layout(model, dataset, resolution, ctx.device, args.batch, ctx.amp, num_classes,
                                      args.layout_images, args.seed, args.workers)
              for name, dataset in named_datasets}
    write_text_atomic(path, json.dumps(layout, indent=2) + "\n")
    print("[eval] dense layout (blob IoU, foreground fraction): " +
          ", ".join(f"{name} {v['blob_iou']:.3f} {v['foreground_fraction']:.3f}" for name, v in layout.items()))


def draw_dense_maps(maps, num_classes, path):
    """figures/dense_maps.png: predict_dense_maps's examples, a grid of one row per set."""
    from utils.figures.plots import save_overlay_grid
    save_overlay_grid(maps, num_classes, path, title="dense prediction of the DFB network; dimmed = background")
    print(f"[eval] dense maps of up to {max(len(examples) for _, examples in maps)} images per set ("
          + ", ".join(name for name, _ in maps) + f"): {path}")


def draw_figures(out_dir, scores, id_test_name, ood_names):
    from utils.figures.plots import plot_roc_curves, plot_score_histograms
    figures = out_dir / "figures"
    shown = [m for m in PLOTTED_METHODS if m in scores]
    drawn = []
    for method in shown:
        drawn.append(figures / f"hist_{method}.png")
        plot_score_histograms(scores[method][id_test_name], {n: scores[method][n] for n in ood_names},
                              drawn[-1], title=f"{method}: {id_test_name} vs OOD")
    for ood in ood_names:
        drawn.append(figures / f"roc_{ood}.png")
        plot_roc_curves({m: (scores[m][id_test_name], scores[m][ood]) for m in shown},
                        drawn[-1], title=f"ROC, {id_test_name} vs {ood}")
    return drawn
