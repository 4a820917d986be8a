"""The dense network's prediction on a few images of every evaluated set: eval.py writes it as
dense_maps.npz beside its results and draws figures/dense_maps.png from it, and
reporting/results_report.py draws its grids from the same file, so the report runs no network.

dense_maps.npz (docs/CONTRACTS.md §4): `sets` (the set names as eval.py reports them, the ID test set
first), `num_classes` (K), and for the i-th set `images_<i>`, uint8 [N, H, W, 3], the images as eval.py
decodes them, and `masks_<i>`, uint8 [N, r, r], the argmax of the K+1 dense logits at the test resolution r
(value K = background).
"""
from itertools import zip_longest

import numpy as np
import torch

from datasets.batch_augment import test_resize
from utils.base.io import atomic_path
from utils.base.runtime import autocast

DENSE_MAPS_FILE = "dense_maps.npz"


def spread_over_classes(labels, count):
    """Indices of at most `count` images taken from the classes in turn: the first image of every class,
    then the second of every class, ..., in dataset order within a class; so a row shows several classes."""
    by_class = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    turns = zip_longest(*by_class.values())
    return [index for turn in turns for index in turn if index is not None][:count]


@torch.no_grad()
def predict_dense_maps(model, named_datasets, resolution, device, amp, per_set):
    """[(set name, [(image uint8 [H, W, 3], mask uint8 [r, r]), ...])]: the dense prediction of `model` on
    `per_set` images of each (name, ImageFolder split) of `named_datasets`, spread over its classes."""
    rows = []
    for name, dataset in named_datasets:
        chosen = spread_over_classes([label for _, label in dataset.samples], per_set)
        batch = torch.stack([dataset[i]["image"] for i in chosen])
        with autocast(device, amp):
            dense = model.dense_logits(test_resize(batch.to(device), resolution), upsample=True).float()
        masks = dense.argmax(1).to(torch.uint8).cpu().numpy()
        rows.append((name, list(zip(batch.permute(0, 2, 3, 1).numpy(), masks))))
    return rows


def save_dense_maps(path, rows, num_classes):
    """Write predict_dense_maps's rows to `path` (dense_maps.npz)."""
    arrays = {"sets": np.array([name for name, _ in rows]), "num_classes": np.array(num_classes)}
    for i, (_, examples) in enumerate(rows):
        arrays[f"images_{i}"] = np.stack([image for image, _ in examples]).astype(np.uint8)
        arrays[f"masks_{i}"] = np.stack([mask for _, mask in examples]).astype(np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays)


def load_dense_maps(path):
    """(rows as predict_dense_maps returns them, K) of a dense_maps.npz."""
    with np.load(path) as stored:
        names = [str(name) for name in stored["sets"]]
        rows = [(name, list(zip(stored[f"images_{i}"], stored[f"masks_{i}"]))) for i, name in enumerate(names)]
        return rows, int(stored["num_classes"])
