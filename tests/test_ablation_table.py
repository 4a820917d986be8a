"""reporting/ablation_table.py: the classification table of scripts/dfb_ablation.sh."""
import json

import pytest

from reporting.ablation_table import ablation_table, main


def write_metrics(run_dir, name, **metrics):
    folder = run_dir / "runs" / name
    folder.mkdir(parents=True)
    (folder / "final_metrics.json").write_text(json.dumps(metrics))


def test_rows_hold_each_run_in_percent_and_the_gap_to_the_classifier(tmp_path, capsys):
    write_metrics(tmp_path, "cls", test_top1=0.8225, val_top1=0.82)
    write_metrics(tmp_path, "dfb_preset", test_top1=0.8159, val_top1=0.786, pixel_accuracy=0.8224,
                  foreground_iou=0.5408)
    write_metrics(tmp_path, "dfb_neither", test_top1=0.7, val_top1=0.69, pixel_accuracy=0.8, foreground_iou=0.5)
    main(["--run_dir", str(tmp_path), "--variants", "preset", "neither", "--out", str(tmp_path / "A.md")])
    rows = [line.split(" | ") for line in (tmp_path / "A.md").read_text().splitlines()[2:]]
    assert capsys.readouterr().out == (tmp_path / "A.md").read_text()
    classifier, preset, neither = rows
    assert classifier[1:3] == ["82.25", "82.00"] and classifier[3] == "–"  # no masks for a classifier
    assert preset[1:5] == ["81.59", "78.60", "82.24", "54.08"]
    assert preset[5].rstrip(" |") == "-0.66"  # (0.8159 - 0.8225) * 100
    assert neither[5].rstrip(" |") == "-12.25"


def test_a_run_that_did_not_finish_is_named(tmp_path):
    write_metrics(tmp_path, "cls", test_top1=0.5)
    with pytest.raises(FileNotFoundError, match="dfb_missing"):
        ablation_table(tmp_path, ["missing"])
