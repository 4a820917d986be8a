"""Figures for looking at results: score histograms, ROC curves, image / mask grids (one row per
image, or screen-sized grids of one row per set).

Figures are built on matplotlib's object API with an explicit Agg canvas (no pyplot, so no
global figure registry to leak into and nothing to close; works on servers without a display).
Every figure is written atomically through utils.base.io.atomic_path; each function returns the path.
Scores follow docs/CONTRACTS.md §5: higher = more in-distribution, ID is the positive class.
Masks follow the mask contract (datasets/masks.py): value k < K = foreground of class k,
K = background, 255 = ignore.
"""
import colorsys
import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from datasets.masks import IGNORE_INDEX, expected_values, invalid_values
from utils.base.io import atomic_path
from utils.ood.metrics import auroc, roc_curve

_IGNORE_GREY = np.array([128, 128, 128], np.float64)
_BACKGROUND_DIMMING = 0.35  # background pixels are shown darkened so the foreground stands out
_FOREGROUND_ALPHA = 0.55    # weight of the class colour over the image on foreground pixels


def _numpy(array):
    """A numpy view of a numpy array or a torch tensor on any device."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _new_figure(width, height):
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path, dpi=100):
    path = Path(path)
    with atomic_path(path) as tmp:
        # the format is given explicitly: the temporary name ends in ".tmp<suffix>"
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    return path


def _scores(scores, name):
    scores = _numpy(scores).astype(np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of scores, got shape {scores.shape}")
    return scores


# ----------------------------------------------------------------------------- score figures

def plot_score_histograms(id_scores, ood_scores, path, title="", bins=50):
    """One panel per OOD set: density histograms of the ID and the OOD scores, AUROC in the title.

    `ood_scores` maps an OOD set's name to its scores. Both histograms of a panel share bins,
    so their heights compare directly. Non-finite scores are left out of the histograms (the
    legend says how many) but count in the AUROC.
    """
    id_scores = _scores(id_scores, "id_scores")
    if not ood_scores:
        raise ValueError("ood_scores: expected a dict {OOD set name: scores} with at least one entry")
    columns = min(len(ood_scores), 3)
    rows = math.ceil(len(ood_scores) / columns)
    figure = _new_figure(4.5 * columns, 3.4 * rows)
    for panel, (name, scores) in enumerate(ood_scores.items()):
        scores = _scores(scores, f"ood_scores[{name!r}]")
        axes = figure.add_subplot(rows, columns, panel + 1)
        finite = np.concatenate([id_scores, scores])
        finite = finite[np.isfinite(finite)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        edges = np.linspace(low, high, bins + 1) if high > low else np.linspace(low - 0.5, high + 0.5, bins + 1)
        for label, values, colour in (("ID", id_scores, "tab:blue"), (name, scores, "tab:orange")):
            shown = values[np.isfinite(values)]
            hidden = values.size - shown.size
            legend = f"{label} (n={values.size}" + (f", {hidden} non-finite not shown)" if hidden else ")")
            axes.hist(shown, bins=edges, density=True, alpha=0.55, color=colour, label=legend)
        axes.set_title(f"{name}: AUROC {100 * auroc(id_scores, scores):.2f}%")
        axes.set_xlabel("score (higher = more in-distribution)")
        axes.set_ylabel("density")
        axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_roc_curves(curves, path, title=""):
    """ROC curves (FPR on x, TPR on y, ID positive) of several methods, AUROC in the legend.

    `curves` maps a method name to its (id_scores, ood_scores). A dotted line marks TPR = 95 %,
    where FPR95 is read.
    """
    if not curves:
        raise ValueError("curves: expected a dict {method name: (id_scores, ood_scores)}")
    figure = _new_figure(5.5, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    for method, pair in curves.items():
        if len(pair) != 2:
            raise ValueError(f"curves[{method!r}]: expected (id_scores, ood_scores)")
        id_scores, ood_scores = pair
        fpr, tpr = roc_curve(id_scores, ood_scores)
        axes.plot(fpr, tpr, label=f"{method} (AUROC {100 * auroc(id_scores, ood_scores):.2f}%)")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    axes.axhline(0.95, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false positive rate (OOD accepted as ID)")
    axes.set_ylabel("true positive rate (ID accepted)")
    axes.legend(fontsize="small", loc="lower right")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


# ----------------------------------------------------------------------------- masks

def _images_nhwc(images):
    images = _numpy(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images: expected uint8 [N, H, W, 3] or [N, 3, H, W], got {images.dtype} {images.shape}")
    if images.shape[-1] == 3:
        return images
    if images.shape[1] == 3:
        return images.transpose(0, 2, 3, 1)
    raise ValueError(f"images: expected 3 colour channels first or last, got shape {images.shape}")


def _masks(masks, num_classes, name, count=None):
    masks = _numpy(masks)
    if masks.ndim != 3 or not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"{name}: expected integer masks [N, H, W], got {masks.dtype} {masks.shape}")
    if count is not None and masks.shape[0] != count:
        raise ValueError(f"{name}: expected {count} masks, got {masks.shape[0]}")
    bad = invalid_values(masks, num_classes)
    if bad.any():
        raise ValueError(f"{name}: values must be {expected_values(num_classes)}; "
                         f"found {np.unique(masks[bad])[:10].tolist()}")
    return masks


def class_colours(num_classes):
    """RGB colours in [0, 1], [K, 3]: tab10 up to 10 classes, else hues spaced by the golden ratio
    (neighbouring class indices get clearly different colours)."""
    if num_classes <= 10:
        return np.asarray(colormaps["tab10"].colors[:num_classes])
    golden = (math.sqrt(5) - 1) / 2
    return np.asarray([colorsys.hsv_to_rgb((k * golden) % 1.0, 0.85, 0.95) for k in range(num_classes)])


def _resize_nearest(mask, height, width):
    rows = np.arange(height) * mask.shape[0] // height
    columns = np.arange(width) * mask.shape[1] // width
    return mask[rows[:, None], columns[None, :]]


def mask_overlay(image, mask, num_classes):
    """uint8 [H, W, 3]: class colour blended over foreground, background dimmed, ignore grey.

    `mask` may have another size than `image`; it is resized with nearest neighbours.
    """
    mask = _resize_nearest(mask, *image.shape[:2])
    image = image.astype(np.float64)
    shown = image * _BACKGROUND_DIMMING
    foreground = mask < num_classes
    colours = class_colours(num_classes) * 255.0
    shown[foreground] = ((1 - _FOREGROUND_ALPHA) * image[foreground]
                         + _FOREGROUND_ALPHA * colours[mask[foreground]])
    shown[mask == IGNORE_INDEX] = _IGNORE_GREY
    return np.clip(np.rint(shown), 0, 255).astype(np.uint8)


def _present_classes(mask, num_classes, class_names):
    present = [int(k) for k in np.unique(mask) if k < num_classes]
    if not present:
        return "no foreground"
    names = [class_names[k] if class_names is not None else str(k) for k in present]
    return ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")


def save_mask_grid(images, masks, num_classes, path, class_names=None, extra_maps=None, true_masks=None,
                   mask_title="pseudo mask"):
    """One row per image: image | mask overlay (titled `mask_title`) | true-mask overlay (optional) | heat maps.

    images: uint8 [N, H, W, 3] or [N, 3, H, W]; masks / true_masks: integer [N, h, w] under the
    mask contract (any h, w: resized for display); extra_maps: {name: [N, h, w] in [0, 1]}, e.g.
    the dense network's background probability, shown as heat maps on a fixed 0..1 scale.
    """
    images = _images_nhwc(images)
    count = images.shape[0]
    if count == 0:
        raise ValueError("images: expected at least one image")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names: expected {num_classes} names, got {len(class_names)}")
    columns = [(mask_title, _masks(masks, num_classes, "masks", count))]
    if true_masks is not None:
        columns.append(("true mask", _masks(true_masks, num_classes, "true_masks", count)))
    heat_maps = []
    for name, values in (extra_maps or {}).items():
        values = _numpy(values)
        if values.ndim != 3 or values.shape[0] != count:
            raise ValueError(f"extra_maps[{name!r}]: expected [{count}, H, W], got shape {values.shape}")
        heat_maps.append((name, values))

    width = 1 + len(columns) + len(heat_maps)
    figure = _new_figure(2.2 * width, 2.3 * count)
    grid = figure.subplots(count, width, squeeze=False)
    for row in range(count):
        cells = iter(grid[row])
        axes = next(cells)
        axes.imshow(images[row])
        axes.set_title(f"image {row}", fontsize="small")
        for label, mask in columns:
            axes = next(cells)
            axes.imshow(mask_overlay(images[row], mask[row], num_classes), interpolation="nearest")
            axes.set_title(f"{label}: {_present_classes(mask[row], num_classes, class_names)}",
                           fontsize="small")
        for name, values in heat_maps:
            axes = next(cells)
            axes.imshow(values[row], cmap="magma", vmin=0.0, vmax=1.0)
            axes.set_title(f"{name} (0..1)", fontsize="small")
    for axes in grid.flat:
        axes.set_axis_off()
    figure.tight_layout()
    return _save(figure, path)


TITLE_BAND_INCHES = 0.3


def save_overlay_grid(rows, num_classes, path, max_pixels=(1600, 1000), title=""):
    """Mask overlays in a grid that fits one screen: one row per (label, examples), one column per example.

    rows: [(row label, [(image uint8 [H, W, 3], mask [h, w] under the mask contract), ...]), ...];
    images of a row may differ in size. The figure is at most max_pixels (width, height) at 100 dpi,
    so a grid of many sets stays readable without scrolling (unlike one image per row).
    """
    if not rows or not all(examples for _, examples in rows):
        raise ValueError("rows: expected at least one (label, examples) row, each with at least one example")
    columns = max(len(examples) for _, examples in rows)
    title_band = TITLE_BAND_INCHES if title else 0.0  # a band of its own, so the title covers no image
    cell = min(max_pixels[0] / (columns + 0.6), (max_pixels[1] - 100 * title_band) / (len(rows) + 0.4)) / 100
    height = cell * (len(rows) + 0.4) + title_band  # inches, at 100 dpi
    figure = _new_figure(cell * (columns + 0.6), height)
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for row, (label, examples) in enumerate(rows):
        for column, axes in enumerate(grid[row]):
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_visible(False)
            if column < len(examples):
                image, mask = examples[column]
                mask = _masks(np.asarray(mask)[None], num_classes, f"rows[{row}] mask {column}")[0]
                axes.imshow(mask_overlay(_images_nhwc(np.asarray(image)[None])[0], mask, num_classes),
                            interpolation="nearest")
        grid[row][0].set_ylabel(label, fontsize="small")
    if title:
        figure.suptitle(title, fontsize="medium", y=1 - 0.5 * title_band / height, va="center")
    figure.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - title_band / height))
    # no bbox "tight": it would grow the canvas past max_pixels by the label margins
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100)
    return path
