"""The report's per-set table of the background logit (reporting/background_table.py), against
means worked out by hand from synthetic logits and dense layouts."""
import json

import numpy as np

from reporting import results_report
from tests.test_reproduce_small import synthetic_run, table_rows

HEADING = "## The background logit per set"


def write_seed_outputs(run_dir, seed, z_bg, fractions):
    """logits/<set>.npy with the background column z_bg[set] (two images each: z - 1 and z + 1, so the
    mean is z) and dense_layout.json with foreground_fraction fractions[set]."""
    folder = run_dir / f"results_dfb_seed{seed}"
    (folder / "logits").mkdir(parents=True, exist_ok=True)
    for name, z in z_bg.items():
        logits = np.zeros((2, 11), dtype=np.float32)
        logits[:, 0] = 5.0  # an object logit the table must not read
        logits[:, -1] = [z - 1, z + 1]
        np.save(folder / "logits" / f"{name}.npy", logits)
    (folder / "dense_layout.json").write_text(json.dumps(
        {name: {"foreground_fraction": value, "blob_iou": 0.5} for name, value in fractions.items()}))


def test_mean_background_logit_shift_and_foreground_share_per_set(tmp_path):
    synthetic_run(tmp_path)  # seeds 0 and 1, OOD sets SetA and SetB, ID test cifar10_test
    write_seed_outputs(tmp_path, 0, {"cifar10_test": 1.0, "SetA": 3.0, "SetB": -1.0},
                       {"cifar10_test": 0.5, "SetA": 0.2, "SetB": 0.7})
    write_seed_outputs(tmp_path, 1, {"cifar10_test": 2.0, "SetA": 5.0, "SetB": 0.0},
                       {"cifar10_test": 0.6, "SetA": 0.1, "SetB": 0.9})
    rows = table_rows(results_report.build_report(tmp_path, tmp_path / "RESULTS.md", grids=False), HEADING)
    # ID: z_bg 1 and 2 -> 1.50 ± 0.71, shift 0; foreground 50 and 60 % -> 55.00 ± 7.07
    assert rows["cifar10_test (ID test)"] == ["1.50 ± 0.71", "0.00 ± 0.00", "55.00 ± 7.07", "(ID)"]
    # SetA: z 3 and 5 (4.00 ± 1.41), shifts 2 and 3 (2.50 ± 0.71), 20 and 10 % (15.00 ± 7.07); its Background
    # AUROC is synthetic_run's (10 * 7 + 3 * 0 + 1) / 100 on both seeds
    assert rows["SetA"] == ["4.00 ± 1.41", "2.50 ± 0.71", "15.00 ± 7.07", "71.00 ± 0.00"]
    # SetB: z -1 and 0, shifts -2 and -2, 70 and 90 %
    assert rows["SetB"] == ["-0.50 ± 0.71", "-2.00 ± 0.00", "80.00 ± 14.14", "74.00 ± 0.00"]


def test_a_run_without_logits_says_so_instead_of_failing(tmp_path):
    synthetic_run(tmp_path)
    report = results_report.build_report(tmp_path, tmp_path / "RESULTS.md", grids=False)
    assert f"{HEADING}\n\nNot available: results_dfb_seed0/logits/cifar10_test.npy is missing." in report
