import os
import tarfile
from pathlib import Path

import pytest

import eval as eval_cli
import make_cam
import train
from tests.helpers import shared_data_folder

TINY = ["--model", "ResNetV2-Tiny", "--resolution", "32", "--pretrained", "none", "--device", "cpu",
        "--workers", "0", "--batch", "16", "--eval_every", "0", "--save_every", "10"]


def run_pipeline(root, train_dir, test_dir, ood_dirs, num_classes, steps=12):
    """classifier -> make_cam -> dfb -> eval through the CLIs' own entry points, at tiny size."""
    root = Path(root)
    cls_export = root / "cls_pretrained_models" / "classifier.pth.tar"
    train.run(train.parse_args(["--task", "cls", "--datadir", str(train_dir), "--test_datadir", str(test_dir),
                                "--logdir", str(root / "runs"), "--name", "cls", "--steps", str(steps),
                                "--export", str(cls_export), *TINY]))
    cam_summary = make_cam.run(make_cam.parse_args([
        f"--dataset={train_dir}", f"--model_path={cls_export}", f"--head_size={num_classes}", "--device=cpu",
        "--workers=0", "--batch=16", "--overlays=4"]))
    train.run(train.parse_args(["--task", "dfb", "--datadir", str(train_dir), "--test_datadir", str(test_dir),
                                "--logdir", str(root / "runs"), "--name", "dfb", "--steps", str(steps),
                                "--holdout", "0.1", *TINY]))
    results = root / "results"
    eval_cli.run(eval_cli.parse_args([
        "--model_path", str(root / "runs" / "dfb" / "checkpoint.pth.tar"), "--id_train_path", str(train_dir),
        "--id_test_path", str(test_dir), "--ood_path", *map(str, ood_dirs), "--logdir", str(results),
        "--device", "cpu", "--workers", "0", "--batch", "32", "--knn_k", "5"]))
    return dict(cls_export=cls_export, cam_summary=cam_summary, results=results)


@pytest.fixture(scope="session")
def shared_data():
    """The shared real image sets (DFB_SHARED_DATA): the tests that use them skip without them, and fail
    under CI=true (tests/helpers.py, shared_data_folder)."""
    return shared_data_folder(os.environ)


def extract_subset(archive, out, per_class, split_prefix=None):
    """The first `per_class` images of every class folder of an ImageFolder tar archive."""
    taken = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = Path(member.name).parts
            if split_prefix and parts[0] != split_prefix:
                continue
            key = parts[:-1]
            if taken.get(key, 0) >= per_class:
                continue
            taken[key] = taken.get(key, 0) + 1
            tar.extract(member, out, filter="data")
    return Path(out)
