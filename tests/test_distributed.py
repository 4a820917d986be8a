"""torchrun on CPU (gloo): two processes must give what one process gives."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.synthetic import generate_benchmark

# every test launches torchrun processes that train and evaluate (pytest -m "not slow" leaves them out)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "ResNetV2-Tiny", "--resolution", "32", "--pretrained", "none", "--device", "cpu",
        "--workers", "0", "--batch", "16", "--eval_every", "0", "--save_every", "100"]


def launch(args, nproc=1):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    prefix = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={nproc}"]
    result = subprocess.run(prefix + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    sets = generate_benchmark(root / "data", seed=1, size=32, n_train_per_class=8, n_test_per_class=2, n_ood=8,
                              progress=False)
    return root, sets


def state(path):
    return torch.load(path, weights_only=False)["model"]


def test_training_two_processes_and_resume_on_one_equals_one_process(data):
    root, sets = data
    # MixUp on: its lambda and pairs are drawn for the global batch, so partners cross process slices
    common = ["train.py", "--task", "cls", "--datadir", str(sets["id_train"]), "--logdir", str(root / "runs"),
              "--steps", "6", "--mixup", "0.5", "--label_smoothing", "0.1", "--weight_decay", "5e-4", "--nesterov",
              "--schedule", "cosine", *TINY]
    launch(common + ["--name", "single"])
    # two processes for 3 steps, then one process resumes the same run to the end
    launch(common + ["--name", "ddp", "--stop_after", "3"], nproc=2)
    assert torch.load(root / "runs" / "ddp" / "checkpoint.pth.tar", weights_only=False)["step"] == 3
    launch(common + ["--name", "ddp"])
    single, ddp = state(root / "runs" / "single" / "checkpoint.pth.tar"), state(root / "runs" / "ddp" / "checkpoint.pth.tar")
    assert torch.load(root / "runs" / "ddp" / "checkpoint.pth.tar", weights_only=False)["step"] == 6
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    assert not torch.equal(single["head.conv.weight"], torch.zeros_like(single["head.conv.weight"]))


def test_make_cam_and_eval_under_torchrun_match_one_process(data):
    root, sets = data
    train_dir = str(sets["id_train"])
    model = root / "cls.pth.tar"
    launch(["train.py", "--task", "cls", "--datadir", train_dir, "--logdir", str(root / "runs"), "--name", "cam",
            "--steps", "5", "--export", str(model), *TINY])
    for nproc, out in ((1, "masks1"), (2, "masks2")):
        launch(["make_cam.py", f"--dataset={train_dir}", f"--model_path={model}", "--head_size=6",
                "--device=cpu", "--workers=0", "--batch=5", f"--out={root / out}", "--overlays=0"], nproc=nproc)
    one = sorted(p.relative_to(root / "masks1") for p in (root / "masks1").rglob("*.png"))
    two = sorted(p.relative_to(root / "masks2") for p in (root / "masks2").rglob("*.png"))
    assert one == two and len(one) == 48
    for relative in one:
        assert np.array_equal(np.array(Image.open(root / "masks1" / relative)),
                              np.array(Image.open(root / "masks2" / relative))), relative

    # a one-image OOD set: under two processes one of them has nothing to extract
    single = root / "Single" / "test" / "one"
    single.mkdir(parents=True, exist_ok=True)
    first = sorted((sets["ood"]["SynthClutter"]).rglob("*.png"))[0]
    (single / first.name).write_bytes(first.read_bytes())
    ood = [str(p) for p in sets["ood"].values()] + [str(single.parent)]
    for nproc, out in ((1, "eval1"), (2, "eval2")):
        launch(["eval.py", "--model_path", str(model), "--id_train_path", train_dir, "--id_test_path",
                str(sets["id_test"]), "--ood_path", *ood, "--logdir", str(root / out), "--device", "cpu",
                "--workers", "0", "--batch", "7", "--knn_k", "3"], nproc=nproc)
    for name in ["synthetic_train", "synthetic_test", *sorted(sets["ood"]), "Single"]:
        np.testing.assert_allclose(np.load(root / "eval2" / "logits" / f"{name}.npy"),
                                   np.load(root / "eval1" / "logits" / f"{name}.npy"), rtol=1e-5, atol=1e-5)
    rows = [list(csv.DictReader(open(root / out / "results.csv"))) for out in ("eval1", "eval2")]
    assert [(r["method"], r["ood_dataset"]) for r in rows[0]] == [(r["method"], r["ood_dataset"]) for r in rows[1]]
    for a, b in zip(*rows):
        assert abs(float(a["auroc"]) - float(b["auroc"])) < 1e-6
