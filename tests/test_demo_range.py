"""reporting/demo_range.py: the min–max table over demo runs."""
import pytest

from reporting.demo_range import main, range_table

HEADER = "method,id_dataset,ood_dataset,fpr95,auroc,aupr_in,aupr_out\n"


def write_run(run, values):
    """values: {(folder, method): (fpr95, auroc)} for the single OOD set 'OOD'."""
    for folder in ("results_cls", "results_dfb"):
        (run / folder).mkdir(parents=True)
        rows = [f"{method},id_test,OOD,{fpr},{auroc},0.5,0.5\n" for (where, method), (fpr, auroc) in values.items()
                if where == folder]
        (run / folder / "results.csv").write_text(HEADER + "".join(rows))


def run_values(shift):
    values = {}
    for method in ("MSP", "Energy", "ViM", "KNN", "Mahalanobis"):
        values[("results_cls", method)] = (0.5, 0.6)
        values[("results_dfb", method)] = (0.4, 0.7 + shift)
        values[("results_dfb", f"DFB-{method}")] = (0.3 - shift, 0.8)
    values[("results_dfb", "Background")] = (0.9, 0.55)
    return values


def test_cells_are_min_to_max_over_runs_in_percent(tmp_path, capsys):
    runs = []
    for index, shift in enumerate((0.0, 0.05, 0.02)):
        runs.append(tmp_path / f"run{index}")
        write_run(runs[-1], run_values(shift))
    main([str(run) for run in runs])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| score | OOD FPR95↓ / AUROC↑ |"
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1].rstrip(" |") for line in lines[2:]}
    assert rows["MSP, classifier"] == "50.0 / 60.0"  # equal in every run: one value
    assert rows["MSP, DFB network"] == "40.0 / 70.0–75.0"
    assert rows["**DFB-Mahalanobis**"] == "25.0–30.0 / 80.0"
    assert rows["Background alone (direction chosen on validation data)"] == "90.0 / 55.0"
    assert len(rows) == 5 * 3 + 1


def test_a_run_without_results_is_named(tmp_path):
    write_run(tmp_path / "run0", run_values(0.0))
    with pytest.raises(FileNotFoundError, match="missing"):
        range_table([tmp_path / "run0", tmp_path / "missing"])
