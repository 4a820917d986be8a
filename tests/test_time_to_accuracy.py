"""bench/time_to_accuracy.py at tiny size on the shared data: each preset's classifier stage as
scripts/reproduce_small.sh runs it (STOP_AFTER=train_cls: nothing after it runs), one table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.recipe_pilots import training_pflop

REPO = Path(__file__).resolve().parent.parent
TINY = ["STEPS_CLS=5", "BATCH=8", "TRAIN_PER_CLASS=6", "TEST_PER_CLASS=3", "OOD_PER_CLASS=1", "OOD_SETS=SVHN",
        "WORKERS=0", "EVAL_BATCH=32"]


@pytest.mark.slow
def test_old_and_new_preset_timed_to_accuracy_in_one_run(shared_data, tmp_path):
    out, report = tmp_path / "tta", tmp_path / "tta.json"
    sets = [arg for item in TINY + [f"DATA_DIR={tmp_path / 'data'}"] for arg in ("--set", item)]
    env = dict(os.environ, SHARED_DATA=str(shared_data), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "bench.time_to_accuracy", "--presets", "cpu_tiny64", "cpu",
                             "--out", str(out), "--json", str(report), *sets], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(report.read_text())["rows"]
    assert [(r["preset"], r["model"], r["resolution"]) for r in rows] == [
        ("cpu_tiny64", "ResNetV2-Tiny", 64), ("cpu", "ResNetV2-C32-S-BN", 32)]
    for row in rows:
        run_dir = out / f"cifar10_{row['preset']}"
        assert row["steps"] == 5 and row["batch"] == 8
        assert row["training_pflop"] == pytest.approx(training_pflop(row["model"], row["resolution"], 40))
        assert row["stage_seconds"] == json.loads((run_dir / "stage_times.json").read_text())["train_cls"]
        assert 0 <= row["test_top1"] <= 1
        assert not (run_dir / "masks").exists()  # STOP_AFTER=train_cls: no later stage ran
        assert f"| cifar10 | {row['preset']} | {row['model']} @ {row['resolution']} | 5 x 8 |" in result.stdout
    assert "bf16 matmul peak" in result.stdout


def test_stop_after_names_its_choices():
    env = dict(os.environ, STOP_AFTER="report", PRESET="cpu")
    result = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "STOP_AFTER=report: expected data, train_cls, make_cam or eval_cls" in result.stderr
