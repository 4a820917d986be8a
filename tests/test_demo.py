"""scripts/demo.sh end to end at tiny size: the table is printed and the figures are PNGs."""
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

# runs scripts/demo.sh end to end (pytest -m "not slow" leaves it out)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_demo_script_runs_offline_and_draws_figures(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "demo"), DEVICE="cpu", STEPS_CLS="6", STEPS_DFB="6", BATCH="8",
               RESOLUTION="32", TRAIN_RESIZE="36", TRAIN_PER_CLASS="6", TEST_PER_CLASS="3", OOD_PER_SET="8",
               WORKERS="0")
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for name in ("SynthNewObjects", "SynthNewBackgrounds", "SynthClutter"):
        assert f"{name} FPR95" in out
    for row in ("| Energy |", "| DFB-Energy |", "| Background |"):
        assert row in out
    listed = out.split("== Figures")[1].splitlines()
    figures = [Path(line) for line in listed if line.endswith(".png")]
    names = {path.name for path in figures}
    assert {"dense_maps.png", "overlays.png", "hist_DFB-Energy.png", "roc_SynthNewBackgrounds.png"} <= names
    for path in figures:
        with Image.open(REPO / path if not path.is_absolute() else path) as image:
            assert image.format == "PNG" and image.size[0] > 0
    summary = (tmp_path / "demo" / "data" / "synthetic" / "train_mask" / "summary.json").read_text()
    assert "foreground_iou" in summary  # pseudo masks scored against the generator's true masks
