"""What the DFB network's background logit does on each set: the report's answer to "why does the
background term hurt on some OOD sets?".

Per set (the ID test split first, then every OOD set), from each DFB seed's evaluation: the mean
image-level background logit z_bg (the last column of `logits/<set>.npy`), its mean minus the
ID test set's, the fraction of pixels the dense network calls foreground (`dense_layout.json`,
eval.py's --layout_images images of the set), and the AUROC of the background score alone with the
direction chosen on validation data (`results.csv`, row Background). If the background logit is to
separate OOD from ID in the chosen direction, an OOD set must sit on the right side of the ID
test set's mean z_bg; a set whose images look like objects to the network (a high foreground
fraction, a low z_bg) sits on the wrong side, and its Background AUROC falls below 50.
"""
import json
from pathlib import Path

import numpy as np

from reporting.tables import DASH, PM, markdown_table, mean_std


def background_by_set(evaluation, id_name, sets):
    """{set: (mean z_bg, foreground fraction or None)} of one DFB evaluation folder."""
    layout_path = Path(evaluation) / "dense_layout.json"
    layout = json.loads(layout_path.read_text()) if layout_path.is_file() else {}
    values = {}
    for name in [id_name, *sets]:
        logits = np.load(Path(evaluation) / "logits" / f"{name}.npy")
        fraction = layout.get(name, {}).get("foreground_fraction")
        values[name] = (float(logits[:, -1].mean()), fraction)
    return values


def _mean_std(values):
    """'mean ± std' over seeds of values in their own unit (z_bg is no fraction); a dash when none is known."""
    values = [v for v in values if v is not None]
    if not values:
        return DASH
    mean, std = mean_std(values)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} {PM} {std:.2f}"


def background_section(run, id_test_name):
    """Markdown lines of the per-set table, mean ± std over the DFB seeds; a note instead when an
    evaluation lacks its logits (eval.py writes them; synthetic or partial folders may not)."""
    missing = [str(Path(f"results_dfb_seed{s}") / "logits" / f"{name}.npy") for s in run.seeds
               for name in [id_test_name, *run.ood_names]
               if not (run.dir / f"results_dfb_seed{s}" / "logits" / f"{name}.npy").is_file()]
    if missing:
        return ["## The background logit per set", "", f"Not available: {missing[0]} is missing.", ""]
    per_seed = {s: background_by_set(run.dir / f"results_dfb_seed{s}", id_test_name, run.ood_names)
                for s in run.seeds}
    rows = []
    for name in [id_test_name, *run.ood_names]:
        z_bg = [per_seed[s][name][0] for s in run.seeds]
        shift = [per_seed[s][name][0] - per_seed[s][id_test_name][0] for s in run.seeds]
        fraction = [None if per_seed[s][name][1] is None else 100 * per_seed[s][name][1] for s in run.seeds]
        auroc = ("(ID)" if name == id_test_name
                 else _mean_std([100 * v for v in run.dfb_values("Background", name, "auroc")]))
        rows.append([f"{name} (ID test)" if name == id_test_name else name, _mean_std(z_bg), _mean_std(shift),
                     _mean_std(fraction), auroc])
    header = ["set", "mean z_bg", "z_bg − ID test's", "foreground pixels %", "Background AUROC↑"]
    return ["## The background logit per set", "",
            "Mean image-level background logit z_bg of the DFB network (`logits/<set>.npy`), its shift from the ID "
            "test set's, the share of pixels its dense map calls foreground (`dense_layout.json`) and the AUROC of "
            "the background score alone in the direction chosen on validation data; mean ± std over the DFB "
            "seeds. A set whose shift has the sign opposite to the other OOD sets' is one the chosen direction "
            "ranks as more ID than the ID test set (AUROC below 50).", "",
            ] + markdown_table(header, rows) + [""]
