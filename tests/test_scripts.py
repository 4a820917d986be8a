"""The README's shell flow (train_cls.sh -> make_cam.py -> train.sh -> eval.sh) with the documented
environment variables, and the early, clear failures when a prerequisite is missing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datasets.shared_archives import unpack_shared
from datasets.synthetic import generate_benchmark
from models.resnetv2 import KNOWN_MODELS

REPO = Path(__file__).resolve().parents[1]


def run_script(script, env_overrides, *args):
    env = dict(os.environ, PYTHON=sys.executable, DEVICE="cpu", WORKERS="0", **env_overrides)
    return subprocess.run(["bash", f"scripts/{script}", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scripts")
    generate_benchmark(root / "dataset", seed=2, size=32, n_train_per_class=6, n_test_per_class=2, n_ood=6,
                       progress=False)
    return root


def demo_preset(**environment):
    """The variables scripts/demo.sh takes from configs/demo.env, as bash sets them in `environment`."""
    names = ("MODEL", "PRETRAINED", "RESOLUTION", "TRAIN_RESIZE", "BATCH", "BASE_LR", "STEPS_CLS", "STEPS_DFB",
             "TRAIN_PER_CLASS", "TEST_PER_CLASS", "OOD_PER_SET")
    script = 'set -u; source configs/demo.env; for name in "$@"; do printf "%s\\0" "${!name}"; done'
    result = subprocess.run(["bash", "-c", script, "demo_preset", *names], cwd=REPO, capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], **environment}, check=True)
    return dict(zip(names, result.stdout.split("\0")))


def test_demo_preset_sets_every_demo_setting_and_the_environment_wins():
    preset = demo_preset()
    assert preset["MODEL"] in KNOWN_MODELS
    assert all(int(preset[name]) > 0 for name in ("RESOLUTION", "TRAIN_RESIZE", "BATCH", "STEPS_CLS", "STEPS_DFB",
                                                   "TRAIN_PER_CLASS", "TEST_PER_CLASS", "OOD_PER_SET"))
    assert float(preset["BASE_LR"]) > 0
    # a value in the environment wins; an empty one falls back to the preset, as the demo always did
    changed = demo_preset(BATCH="8", STEPS_CLS="")
    assert changed["BATCH"] == "8" and changed["STEPS_CLS"] == preset["STEPS_CLS"]


def test_missing_data_fails_early_with_the_command_to_fix_it(tmp_path):
    result = run_script("train_cls.sh", {"DATA_ROOT": str(tmp_path), "DATASETS": "cifar10"})
    assert result.returncode != 0
    assert f"{tmp_path}/cifar10/train is missing" in result.stderr and "prepare_data.py" in result.stderr


def test_missing_weights_masks_and_checkpoint_are_named(data_root):
    env = {"DATA_ROOT": str(data_root / "dataset"), "DATASETS": "synthetic", "LOGDIR": str(data_root / "runs"),
           "CLS_DIR": str(data_root / "cls"), "RESULTS": str(data_root / "results"), "OOD_SETS": "SynthNewObjects"}
    weights = run_script("train_cls.sh", {**env, "PRETRAINED": str(data_root / "absent.npz")})
    assert weights.returncode != 0 and "wget" in weights.stderr and "bit_models/absent.npz" in weights.stderr
    # by default the release's initialisation, ImageNet-21k then ImageNet-1k fine-tuned
    default = run_script("train_cls.sh", {**env, "MODEL": "BiT-M-R50x1"})
    assert default.returncode != 0 and "pretrained/BiT-M-R50x1-ILSVRC2012.npz not found" in default.stderr
    assert "https://storage.googleapis.com/bit_models/BiT-M-R50x1-ILSVRC2012.npz" in default.stderr
    masks = run_script("train.sh", env)
    assert masks.returncode != 0 and "make_cam.py --dataset=" in masks.stderr and "--head_size=6" in masks.stderr
    checkpoint = run_script("eval.sh", env)
    assert checkpoint.returncode != 0 and "run bash scripts/train.sh first" in checkpoint.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ResNetV2-Tiny", "ResNetV2-C32-S-BN"])  # the 64 px presets' and PRESET=cpu's
def test_readme_flow_with_documented_variables(tmp_path, model):
    """Every stage of the README on `model`: train_cls.sh, make_cam.py, train.sh, eval.sh, then eval.py
    --save_detector and score.py on new images (a data folder of its own: make_cam.py writes the masks
    beside the images)."""
    data_root = runs = tmp_path
    generate_benchmark(data_root / "dataset", seed=2, size=32, n_train_per_class=6, n_test_per_class=2, n_ood=6,
                       progress=False)
    env = {"DATA_ROOT": str(data_root / "dataset"), "DATASETS": "synthetic", "OOD_SETS": "SynthNewObjects SynthClutter",
           "MODEL": model, "PRETRAINED": "none", "STEPS": "6", "BATCH": "8", "RESOLUTION": "32",
           "LOGDIR": str(runs / "runs"), "CLS_DIR": str(runs / "cls"), "RESULTS": str(runs / "results")}
    synthetic, new_images = data_root / "dataset" / "synthetic", data_root / "dataset" / "SynthNewObjects" / "test"
    for step in (lambda: run_script("train_cls.sh", env),
                 lambda: subprocess.run([sys.executable, "make_cam.py", f"--dataset={synthetic}/train",
                                         f"--model_path={runs}/cls/synthetic.pth.tar", "--head_size=6",
                                         "--device=cpu", "--workers=0"], cwd=REPO, capture_output=True, text=True),
                 lambda: run_script("train.sh", env),
                 lambda: run_script("eval.sh", env),
                 lambda: subprocess.run([sys.executable, "eval.py", "--model_path",
                                         f"{runs}/runs/synthetic_dfb/checkpoint.pth.tar", "--id_train_path",
                                         f"{synthetic}/train", "--id_test_path", f"{synthetic}/test", "--ood_path",
                                         str(new_images), "--logdir", f"{runs}/detector", "--save_detector",
                                         "--device", "cpu", "--workers", "0"], cwd=REPO, capture_output=True, text=True),
                 lambda: subprocess.run([sys.executable, "score.py", "--detector", f"{runs}/detector/detector.pt",
                                         "--images", str(new_images), "--out", f"{runs}/scores.csv", "--device", "cpu"],
                                        cwd=REPO, capture_output=True, text=True)):
        result = step()
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for stage in ("dfb", "cls"):
        rows = (runs / "results" / f"synthetic_{stage}" / "results.csv").read_text().splitlines()
        assert rows[0] == "method,id_dataset,ood_dataset,fpr95,auroc,aupr_in,aupr_out"
        assert {row.split(",")[2] for row in rows[1:]} == {"SynthNewObjects", "SynthClutter"}
    checkpoint = torch.load(runs / "runs" / "synthetic_dfb" / "checkpoint.pth.tar", map_location="cpu", weights_only=False)
    assert checkpoint["model_name"] == model
    scored = (runs / "scores.csv").read_text().splitlines()
    assert len(scored) == 1 + len(list(new_images.rglob("*.png")))


@pytest.mark.slow
def test_readme_flow_with_cifar100_as_id_on_real_images(shared_data, tmp_path):
    """The 100-class path: a 100-class classifier, CAMs with --head_size=100, masks labelled 0..100, a
    101-class dense head and 100 foreground logits in every score, on real CIFAR-100 images."""
    import numpy as np
    import torch
    from PIL import Image
    root = tmp_path / "dataset"
    # 12 images per class: eval.py's seeded half for the fusions leaves every class some to fit on
    unpack_shared(shared_data, root, ["CIFAR10", "SVHN"], train_per_class=12, test_per_class=1, ood_per_class=3,
                  log=lambda _: None, id_name="cifar100")
    env = {"DATA_ROOT": str(root), "DATASETS": "cifar100", "OOD_SETS": "SVHN CIFAR10", "MODEL": "ResNetV2-Tiny",
           "PRETRAINED": "none", "STEPS": "6", "BATCH": "16", "RESOLUTION": "32", "LOGDIR": str(tmp_path / "runs"),
           "CLS_DIR": str(tmp_path / "cls"), "RESULTS": str(tmp_path / "results")}
    for step in (lambda: run_script("train_cls.sh", env),
                 lambda: subprocess.run([sys.executable, "make_cam.py", f"--dataset={root}/cifar100/train",
                                         f"--model_path={tmp_path}/cls/cifar100.pth.tar", "--head_size=100",
                                         "--labeled", "--device=cpu", "--workers=0"], cwd=REPO, capture_output=True, text=True),
                 lambda: run_script("train.sh", env),
                 lambda: run_script("eval.sh", env)):
        result = step()
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    masks = sorted((root / "cifar100" / "train_mask").glob("*/*.png"))  # one per image; overlays.png aside
    assert len(masks) == 1200
    # docs/CONTRACTS.md: k = foreground of class k (folder order), 100 = background; --labeled: the
    # folder's own class, so a mask holds at most that class and the background
    classes = sorted(folder.name for folder in (root / "cifar100" / "train").iterdir())
    foreground = set()
    for path in masks:
        values = set(np.unique(np.asarray(Image.open(path))).tolist()) - {100}
        assert values <= {classes.index(path.parent.name)}, path
        foreground |= values
    assert max(foreground) >= 10  # beyond the ten classes of CIFAR-10
    checkpoint = torch.load(tmp_path / "runs" / "cifar100_dfb" / "checkpoint.pth.tar", map_location="cpu",
                            weights_only=False)
    assert checkpoint["head_size"] == 101
    for stage, width in (("dfb", 101), ("cls", 100)):
        results = tmp_path / "results" / f"cifar100_{stage}"
        rows = (results / "results.csv").read_text().splitlines()
        assert {row.split(",")[2] for row in rows[1:]} == {"SVHN", "CIFAR10"}
        assert np.load(results / "logits" / "CIFAR10.npy").shape == (30, width)
