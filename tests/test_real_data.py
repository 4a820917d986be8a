"""The pipeline on real images: a subset of the shared CIFAR-10 JPEGs, Textures as OOD."""
import csv
import json

import numpy as np
import pytest

from conftest import extract_subset, run_pipeline

# the whole pipeline on real images (pytest -m "not slow" leaves it out)
pytestmark = pytest.mark.slow


def test_pipeline_on_shared_cifar10_subset(shared_data, tmp_path):
    cifar = extract_subset(shared_data / "cifar10.tar", tmp_path / "cifar10", per_class=8)
    textures = extract_subset(shared_data / "textures.tar", tmp_path / "Textures", per_class=3)
    outputs = run_pipeline(tmp_path, cifar / "train", cifar / "test", [textures / "test"], num_classes=10)
    assert outputs["cam_summary"]["images_computed"] == 80
    rows = list(csv.DictReader(open(outputs["results"] / "results.csv")))
    assert {row["ood_dataset"] for row in rows} == {"Textures"}
    assert {row["id_dataset"] for row in rows} == {"cifar10_test"}
    logits = np.load(outputs["results"] / "logits" / "Textures.npy")
    assert logits.shape == (30, 11)  # 64x64 textures resized to the 32-pixel test size, K + 1 logits
    assert json.loads((outputs["results"] / "accuracy.json").read_text())["images"] == 80
