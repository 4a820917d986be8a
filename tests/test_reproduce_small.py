"""scripts/reproduce_small.sh and its helpers: data unpacking (bench.reproduce_data), the run
record (bench.run_record) and the report (bench.results_report)."""
import csv
import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from bench import reproduce_data, results_report, run_record
from utils.fusion import FUSIONS

REPO = Path(__file__).resolve().parents[1]
OOD_NAMES = ("Textures", "MNIST", "Scene15", "IntelScenes")


def write_tar(path, names):
    with tarfile.open(path, "w") as tar:
        for name in names:
            data = f"image {name}".encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def image_files(folder):
    return sorted(str(path.relative_to(folder)) for path in Path(folder).rglob("*.png"))


# --- data -------------------------------------------------------------------------------------

def test_extract_set_keeps_the_first_images_of_each_class_and_is_idempotent(tmp_path):
    names = [f"{split}/{label}/{i}.png" for split in ("test", "train") for label in ("a", "b") for i in range(4)]
    archive = write_tar(tmp_path / "set.tar", names)
    target = tmp_path / "out" / "set"
    (tmp_path / "out" / ".set.partial").mkdir(parents=True)  # as an interrupted run leaves it

    counts = reproduce_data.extract_set(archive, target, {"train": 3, "test": None})

    assert counts == {"train": 6, "test": 8}
    assert image_files(target / "train") == [f"{label}/{i}.png" for label in "ab" for i in range(3)]
    assert not (tmp_path / "out" / ".set.partial").exists()
    (target / "train" / "a" / "0.png").unlink()  # a second call must not touch a complete set
    assert reproduce_data.extract_set(archive, target, {"train": 3, "test": None}) == counts
    assert not (target / "train" / "a" / "0.png").exists()
    with pytest.raises(ValueError, match="per-class limits"):
        reproduce_data.extract_set(archive, target, {"train": 2, "test": None})


def test_extract_set_refuses_a_folder_it_did_not_write(tmp_path):
    archive = write_tar(tmp_path / "set.tar", ["test/a/0.png"])
    (tmp_path / "set").mkdir()
    with pytest.raises(FileExistsError, match="no .complete marker"):
        reproduce_data.extract_set(archive, tmp_path / "set", {"test": None})


def test_prepare_skips_missing_ood_archives_and_writes_the_manifest(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    write_tar(shared / "cifar10.tar", [f"{split}/c{k}/{i}.png" for split in ("train", "test")
                                       for k in range(2) for i in range(3)])
    write_tar(shared / "textures.tar", [f"test/t{k}/{i}.png" for k in range(3) for i in range(5)])

    splits = reproduce_data.prepare(shared, tmp_path / "data", ["Textures", "MNIST"], train_per_class=2,
                                    ood_per_class=1)

    assert splits == [tmp_path / "data" / "Textures" / "test"]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["id"]["cifar10"]["images"] == {"train": 4, "test": 6}
    assert list(manifest["ood"]) == ["Textures"] and manifest["ood"]["Textures"]["images"] == {"test": 3}
    with pytest.raises(ValueError, match="unknown OOD set"):
        reproduce_data.prepare(shared, tmp_path / "data", ["SVHN"])
    with pytest.raises(FileNotFoundError, match="cifar10.tar"):
        reproduce_data.prepare(tmp_path, tmp_path / "data", ["Textures"])


def test_prepare_reads_gzip_compressed_archives(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    for name, members in (("cifar10.tar", [f"{split}/c0/{i}.png" for split in ("train", "test") for i in range(2)]),
                          ("mnist.tar", ["test/7/0.png"])):
        plain = write_tar(tmp_path / name, members)
        (shared / f"{name}.gz").write_bytes(gzip.compress(plain.read_bytes()))

    splits = reproduce_data.prepare(shared, tmp_path / "data", ["MNIST"])

    assert splits == [tmp_path / "data" / "MNIST" / "test"]
    assert image_files(tmp_path / "data" / "cifar10") == ["test/c0/0.png", "test/c0/1.png",
                                                          "train/c0/0.png", "train/c0/1.png"]


# --- run record -------------------------------------------------------------------------------

def test_a_rerun_may_not_change_settings_that_change_results():
    previous = {"MODEL": "BiT-M-R50x1", "STEPS_CLS": "3000", "WORKERS": "8"}
    run_record.check_same_run(previous, dict(previous, WORKERS="2"))
    with pytest.raises(ValueError, match="STEPS_CLS: '3000' -> '100'"):
        run_record.check_same_run(previous, dict(previous, STEPS_CLS="100"))


def test_stage_times_add_up_over_resumed_attempts(tmp_path):
    path = tmp_path / "stage_times.json"
    run_record.add_stage_time(path, "train_cls", 10.04)
    run_record.add_stage_time(path, "make_cam", 2.0)
    run_record.add_stage_time(path, "train_cls", 5.0)
    assert json.loads(path.read_text()) == {"train_cls": 15.0, "make_cam": 2.0}


# --- report on a synthetic run folder ----------------------------------------------------------

METRIC_KEYS = ("fpr95", "auroc", "aupr_in", "aupr_out")


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "id_dataset", "ood_dataset", *METRIC_KEYS])
        writer.writerows(rows)


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def synthetic_run(run_dir):
    """A run folder as scripts/reproduce_small.sh leaves it, with made-up numbers: two base scores,
    two OOD sets; metric j of method m on set o is (10 m + 3 o + j) / 100 (+ 0.2 for DFB-m)."""
    base, sets = ["MSP", "Energy"], ["SetA", "SetB"]

    def row(method, m, o, shift=0.0):
        return [method, "cifar10_test", sets[o], *(f"{(10 * m + 3 * o + j) / 100 + shift:.6f}" for j in range(4))]
    write_csv(run_dir / "results_cls" / "results.csv", [row(b, m, o) for m, b in enumerate(base) for o in range(2)])
    write_csv(run_dir / "results_dfb" / "results.csv",
              [row(b, m, o, 0.05) for m, b in enumerate(base) for o in range(2)]
              + [row(f"DFB-{b}", m, o, 0.2) for m, b in enumerate(base) for o in range(2)]
              + [row("Background", 7, o) for o in range(2)])
    write_json(run_dir / "stage_times.json", {stage: 1.5 for stage in results_report.STAGES})
    write_json(run_dir / "run_info.json", {"command": "BATCH=8 bash scripts/reproduce_small.sh",
                                           "settings": {"BATCH": "8", "PRETRAINED": "none"}, "git_commit": "abc",
                                           "device": "NVIDIA H100 80GB HBM3", "torch": "2.x", "python": "3.11",
                                           "date_utc": "2026-01-01 00:00:00"})
    write_json(run_dir / "data_manifest.json", {
        "shared": "/shared", "id": {"cifar10": {"archive": "cifar10.tar", "images": {"train": 40, "test": 20}}},
        "ood": {name: {"archive": f"{name}.tar", "content": f"{name} images", "stands_for": "X", "images": {"test": 9}}
                for name in sets}})
    for name, top1 in (("results_cls", 0.81), ("results_dfb", 0.79)):
        write_json(run_dir / name / "accuracy.json", {"id_dataset": "cifar10_test", "top1": top1, "images": 100})
    write_json(run_dir / "results_dfb" / "fusion_selection.json",
               {f"DFB-{b}[{mode}]": {"sign": 1 if b == "MSP" else -1, "temperature": 0.5, "validation_auroc": 0.7}
                for b in base for mode in FUSIONS})
    write_json(run_dir / "masks" / "train" / "summary.json",
               {"images_total": 50, "images_computed": 50, "images_skipped": 0, "mean_foreground_fraction": 0.4,
                "empty_foreground": 2, "classifier_accuracy_on_split": 0.9, "labeled": False,
                "scales": [1.0, 0.5], "sigma": 4.0, "threshold": 0.5, "resolution": 64})
    write_json(run_dir / "runs" / "dfb" / "final_metrics.json", {"test_top1": 0.79, "pixel_accuracy": 0.75})
    figure = run_dir / "results_dfb" / "figures" / "roc_SetA.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"png")
    return base, sets


def table_rows(report, heading):
    """{first cell: cells} of the Markdown table under `heading`."""
    section = report.split(heading + "\n", 1)[1].split("\n#", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows}


def test_report_of_a_synthetic_run(tmp_path):
    run_dir = tmp_path / "run"
    synthetic_run(run_dir)
    report = results_report.build_report(run_dir, run_dir / "RESULTS.md")

    set_b = table_rows(report, "### SetB")
    # Energy (m = 1) on SetB (o = 1): AUROC (j = 1) 0.14 on the classifier, 0.34 fused: +20 points
    assert set_b["Energy"][:5] == ["13.00", "14.00", "15.00", "16.00", "19.00"]
    assert set_b["Energy"][5:] == ["33.00", "34.00", "35.00", "36.00", "+20.00"]
    assert set_b["Background (−z_bg)"][5:9] == ["73.00", "74.00", "75.00", "76.00"]
    average = table_rows(report, "### Average over the 2 OOD sets")
    assert average["MSP"] == ["1.50", "2.50", "21.50", "22.50", "+20.00"]
    fusion = table_rows(report, "## Fusion parameters")
    assert fusion["DFB-Energy"] == ["-1", "0.5", "70.00"]
    assert "never on any of the OOD sets above" in report
    assert "**from scratch**" in report and "NVIDIA H100 80GB HBM3" in report
    assert "| train_dfb | DFB network (train.py --task dfb) | 1.5 |" in report
    assert "| **total** |  | **9.0** |" in report
    assert "[results_dfb/figures/roc_SetA.png](results_dfb/figures/roc_SetA.png)" in report
    assert table_rows(report, "## Data")["SetB"] == ["SetB.tar", "SetB images; stands for X", "test 9"]
    assert table_rows(report, "## Pseudo masks")["DFB network on held-out training images: pixel accuracy"] == \
        ["75.00 %"]


def test_report_publishes_figures_beside_the_report(tmp_path):
    run_dir = tmp_path / "run"
    synthetic_run(run_dir)
    out = tmp_path / "docs" / "RESULTS.md"
    results_report.main(["--run_dir", str(run_dir), "--out", str(out), "--figures_to", str(tmp_path / "docs" / "figs")])
    assert (tmp_path / "docs" / "figs" / "results_dfb" / "figures" / "roc_SetA.png").read_bytes() == b"png"
    assert "(figs/results_dfb/figures/roc_SetA.png)" in out.read_text()


def test_report_names_the_missing_file_and_its_stage(tmp_path):
    synthetic_run(tmp_path)
    (tmp_path / "masks" / "train" / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="summary.json not found: it is written by make_cam.py"):
        results_report.build_report(tmp_path, tmp_path / "RESULTS.md")


def test_report_knows_every_fusion_mode():
    assert set(results_report.FORMULAS) == set(FUSIONS)


# --- the script, end to end at tiny size --------------------------------------------------------

TINY = dict(DEVICE="cpu", MODEL="ResNetV2-Tiny", RESOLUTION="32", TRAIN_RESIZE="36", BATCH="16", STEPS_CLS="6",
            STEPS_DFB="6", BASE_LR="0.01", TRAIN_PER_CLASS="20", TEST_PER_CLASS="10", OOD_PER_CLASS="3",
            WORKERS="0", CAM_BATCH="32", EVAL_BATCH="64", KNN_K="5",
            # two OpenMP threads on two shared cores spin-wait (docs/PERFORMANCE.md)
            OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_script(env):
    result = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_reproduce_small_script_at_tiny_size(shared_data, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, **TINY, SHARED_DATA=str(shared_data), OUT=str(out), DATA_DIR=str(tmp_path / "data"))
    run_script(env)

    times = json.loads((out / "stage_times.json").read_text())
    assert set(times) == set(results_report.STAGES)
    report = (out / "RESULTS.md").read_text()
    cls_rows = list(csv.DictReader(io.StringIO((out / "results_cls" / "results.csv").read_text())))
    dfb_rows = list(csv.DictReader(io.StringIO((out / "results_dfb" / "results.csv").read_text())))
    for ood in OOD_NAMES:
        table = table_rows(report, f"### {ood}")
        assert set(table) >= {"MSP", "Energy", "Mahalanobis", "Background (−z_bg)"}
        cls_msp = next(r for r in cls_rows if r["method"] == "MSP" and r["ood_dataset"] == ood)
        dfb_msp = next(r for r in dfb_rows if r["method"] == "DFB-MSP" and r["ood_dataset"] == ood)
        assert table["MSP"][1] == f"{100 * float(cls_msp['auroc']):.2f}"
        assert table["MSP"][6] == f"{100 * float(dfb_msp['auroc']):.2f}"
    assert "| DFB-Mahalanobis |" in report  # its fusion parameters
    assert json.loads((out / "run_info.json").read_text())["device"].startswith("CPU")

    rerun = run_script(env)  # everything done: each stage is skipped and keeps its recorded time
    assert rerun.count("done in an earlier run, skipped") == len(results_report.STAGES) - 1
    again = json.loads((out / "stage_times.json").read_text())
    assert {s: t for s, t in again.items() if s != "data"} == {s: t for s, t in times.items() if s != "data"}

    changed = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, env=dict(env, STEPS_CLS="7"),
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode != 0 and "STEPS_CLS: '6' -> '7'" in changed.stderr
