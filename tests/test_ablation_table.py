"""reporting/ablation_table.py: the variant tables of scripts/dfb_ablation.sh and of the report's ablation section."""
import csv
import json

import pytest

from reporting.ablation_table import main, variant_tables


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def write_results(path, aurocs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "id_dataset", "ood_dataset", "fpr95", "auroc", "aupr_in", "aupr_out"])
        for (method, ood), value in aurocs.items():
            writer.writerow([method, "cifar10_test", ood, 0.5, value, 0.5, 0.5])


def table(lines, title_start):
    """{first cell: other cells} of the table after the line starting with title_start."""
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start)) + 2
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_tables_hold_classification_validation_ood_and_layout(tmp_path, capsys):
    write_json(tmp_path / "runs" / "cls" / "final_metrics.json", {"test_top1": 0.8225, "val_top1": 0.82})
    write_json(tmp_path / "results_cls" / "accuracy.json", {"top1": 0.85, "id_dataset": "cifar10_test"})
    write_results(tmp_path / "results_cls" / "results.csv",
                  {("MSP", "SetA"): 0.70, ("Energy", "SetA"): 0.80, ("MSP", "SetB"): 0.60, ("Energy", "SetB"): 0.65})
    # seed0: evaluated; slim: trained only
    write_json(tmp_path / "runs" / "dfb_seed0" / "final_metrics.json",
               {"test_top1": 0.81, "val_top1": 0.786, "pixel_accuracy": 0.8224, "foreground_iou": 0.5408})
    write_json(tmp_path / "results_dfb_seed0" / "accuracy.json", {"top1": 0.8159})
    write_results(tmp_path / "results_dfb_seed0" / "results.csv",
                  {("DFB-MSP", "SetA"): 0.75, ("DFB-Energy", "SetA"): 0.79, ("Background", "SetA"): 0.9,
                   ("DFB-MSP", "SetB"): 0.61, ("DFB-Energy", "SetB"): 0.66, ("Background", "SetB"): 0.3})
    write_json(tmp_path / "results_dfb_seed0" / "fusion_selection.json",
               {"Background": {"sign": -1, "validation_auroc": 0.7},
                "DFB-MSP[logit]": {"sign": 1, "temperature": 1, "validation_auroc": 0.8},
                "DFB-Energy[logit]": {"sign": -1, "temperature": 2, "validation_auroc": 0.9}})
    write_json(tmp_path / "results_dfb_seed0" / "dense_layout.json",
               {"cifar10_test": {"blob_iou": 0.5, "foreground_fraction": 0.25, "images": 10},
                "SetA": {"blob_iou": 0.95, "foreground_fraction": 0.3, "images": 10}})
    write_json(tmp_path / "runs" / "dfb_slim" / "final_metrics.json", {"test_top1": 0.7, "val_top1": 0.69})

    main(["--run_dir", str(tmp_path), "--variants", "seed0", "slim", "--out", str(tmp_path / "A.md")])
    text = (tmp_path / "A.md").read_text()
    assert capsys.readouterr().out == text
    lines = text.splitlines()
    classification = table(lines, "Classification")
    assert classification["classifier"][:2] == ["85.00", "82.00"]  # eval.py's test top-1 wins over train.py's
    assert classification["seed0"] == ["81.59", "78.60", "82.24", "54.08", "85.00", "-1 (70.00)"]
    assert classification["slim"] == ["70.00", "69.00", "–", "–", "–", "–"]  # not evaluated: train.py's top-1
    ood = table(lines, "OOD test sets")
    assert ood["seed0"] == ["90.00 / 1 of 2", "30.00 / 2 of 2"]
    assert ood["slim"] == ["– / –", "– / –"]
    layout = table(lines, "Dense foregrounds")
    assert layout["seed0"] == ["0.500 / 25.0", "0.950 / 30.0"] and layout["slim"] == ["–", "–"]


def test_a_run_that_did_not_finish_is_named(tmp_path):
    write_json(tmp_path / "runs" / "cls" / "final_metrics.json", {"test_top1": 0.5})
    with pytest.raises(FileNotFoundError, match="dfb_missing"):
        variant_tables(tmp_path, [("missing", "missing")])
