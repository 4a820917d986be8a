"""scripts/reproduce_small.sh and its helpers: data unpacking (datasets.shared_archives,
unpack_shared_data.py), the run record (reporting.run_record) and the report (reporting.results_report)."""
import csv
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import unpack_shared_data
from datasets import shared_archives
from reporting import results_report, run_record
from utils.ood.fusion import FUSIONS

REPO = Path(__file__).resolve().parents[1]


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

def test_unpack_set_keeps_the_first_images_of_each_class_and_is_idempotent(tmp_path):
    names = [f"{split}/{label}/{i}.png" for split in ("test", "train") for label in ("a", "b") for i in range(4)]
    archive = write_tar(tmp_path / "set.tar", names)
    target = tmp_path / "out" / "set"

    counts = shared_archives.unpack_set(archive, target, {"train": 3, "test": None})

    assert counts == {"train": 6, "test": 8} and list(counts) == ["train", "test"]
    assert image_files(target / "train") == [f"{label}/{i}.png" for label in "ab" for i in range(3)]
    (target / "train" / "a" / "0.png").unlink()  # a second call must not touch a complete set
    assert shared_archives.unpack_set(archive, target, {"train": 3, "test": None}) == counts
    assert not (target / "train" / "a" / "0.png").exists()
    with pytest.raises(ValueError, match="per_class"):
        shared_archives.unpack_set(archive, target, {"train": 2, "test": None})


def test_unpack_set_continues_an_interrupted_run_and_refuses_foreign_files(tmp_path):
    archive = write_tar(tmp_path / "set.tar", [f"test/a/{i}.png" for i in range(3)])
    target = tmp_path / "set"
    # as a killed run leaves it: no marker, one image written, one half-written temporary
    (target / "test" / "a").mkdir(parents=True)
    (target / "test" / "a" / "0.png").write_bytes(b"image test/a/0.png")
    stale = target / "test" / "a" / ".1.x1y2.tmp.png"
    stale.write_bytes(b"half")
    assert shared_archives.unpack_set(archive, target, {"test": None}) == {"test": 3}
    assert not stale.exists() and image_files(target) == [f"test/a/{i}.png" for i in range(3)]

    foreign = tmp_path / "other"
    (foreign / "test" / "a").mkdir(parents=True)
    (foreign / "test" / "a" / "x.png").write_bytes(b"not from the archive")
    with pytest.raises(ValueError, match="x.png"):
        shared_archives.unpack_set(archive, foreign, {"test": None})


def test_prepare_skips_missing_ood_archives_and_writes_the_manifest(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    write_tar(shared / "cifar10.tar", [f"{split}/c{k}/{i}.png" for split in ("train", "test")
                                       for k in range(2) for i in range(3)])
    write_tar(shared / "textures.tar", [f"test/t{k}/{i}.png" for k in range(3) for i in range(5)])

    splits = shared_archives.unpack_shared(shared, tmp_path / "data", ["Textures", "MNIST"], train_per_class=2,
                                           ood_per_class=1, log=lambda _: None)

    assert splits == [tmp_path / "data" / "Textures" / "test"]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["id"]["cifar10"]["images"] == {"train": 4, "test": 6}
    assert list(manifest["ood"]) == ["Textures"] and manifest["ood"]["Textures"]["images"] == {"test": 3}
    with pytest.raises(ValueError, match="unknown OOD set"):
        shared_archives.unpack_shared(shared, tmp_path / "data", ["Places"])
    with pytest.raises(FileNotFoundError, match="cifar10.tar"):
        shared_archives.unpack_shared(tmp_path, tmp_path / "data", ["Textures"])


def test_prepare_reads_gzip_compressed_archives(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    for name, members in (("cifar10.tar", [f"{split}/c0/{i}.png" for split in ("train", "test") for i in range(2)]),
                          ("mnist.tar", ["test/7/0.png"])):
        plain = write_tar(tmp_path / name, members)
        (shared / f"{name}.gz").write_bytes(gzip.compress(plain.read_bytes()))

    splits = shared_archives.unpack_shared(shared, tmp_path / "data", ["MNIST"], log=lambda _: None)

    assert splits == [tmp_path / "data" / "MNIST" / "test"]
    assert image_files(tmp_path / "data" / "cifar10") == ["test/c0/0.png", "test/c0/1.png",
                                                          "train/c0/0.png", "train/c0/1.png"]


def test_cli_prints_the_ood_splits_and_logs_to_stderr(tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    write_tar(shared / "cifar10.tar", [f"{split}/c0/{i}.png" for split in ("train", "test") for i in range(2)])
    write_tar(shared / "mnist.tar", ["test/7/0.png", "test/7/1.png"])

    unpack_shared_data.main(["--shared", str(shared), "--out", str(tmp_path / "data"), "--ood", "MNIST",
                             "--train_per_class", "1", "--test_per_class", ""])

    printed = capsys.readouterr()
    assert printed.out == f"{tmp_path / 'data' / 'MNIST' / 'test'}\n"
    assert "[data]" in printed.err
    assert image_files(tmp_path / "data" / "cifar10") == ["test/c0/0.png", "test/c0/1.png", "train/c0/0.png"]
    with pytest.raises(SystemExit) as exit_info:  # bad input: one line, status 2
        unpack_shared_data.main(["--shared", str(tmp_path), "--out", str(tmp_path / "data")])
    assert exit_info.value.code == 2 and "cifar10.tar" in capsys.readouterr().err



def test_cifar100_as_id_takes_cifar10_as_ood_and_refuses_its_own_archive(tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("cifar10.tar", "cifar100.tar"):
        write_tar(shared / name, [f"{split}/{name[:-4]}_c{k}/{i}.png" for split in ("train", "test")
                                  for k in range(2) for i in range(2)])
    write_tar(shared / "mnist.tar", ["test/7/0.png"])
    assert "CIFAR10" in shared_archives.default_ood_sets("cifar100")
    assert "CIFAR100" not in shared_archives.default_ood_sets("cifar100")
    assert "CIFAR10" not in shared_archives.default_ood_sets("cifar10")

    unpack_shared_data.main(["--shared", str(shared), "--out", str(tmp_path / "data"), "--id", "cifar100"])

    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "data" / "CIFAR10" / "test"), str(tmp_path / "data" / "MNIST" / "test")]
    assert image_files(tmp_path / "data" / "cifar100") == [f"{split}/cifar100_c{k}/{i}.png"
                                                           for split in ("test", "train") for k in range(2)
                                                           for i in range(2)]
    # the OOD copy of CIFAR-10 is its test split only
    assert image_files(tmp_path / "data" / "CIFAR10") == [f"test/cifar10_c{k}/{i}.png" for k in range(2)
                                                          for i in range(2)]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert list(manifest["id"]) == ["cifar100"] and manifest["id"]["cifar100"]["archive"] == "cifar100.tar"
    with pytest.raises(ValueError, match="own archive cifar100.tar"):
        shared_archives.unpack_shared(shared, tmp_path / "other", ["CIFAR100"], id_name="cifar100")
    with pytest.raises(ValueError, match="unknown ID set"):
        shared_archives.unpack_shared(shared, tmp_path / "other", [], id_name="svhn")


def test_cli_prints_the_default_ood_sets_of_an_id_set(capsys):
    for id_name, first in (("cifar10", "CIFAR100"), ("cifar100", "CIFAR10")):
        unpack_shared_data.main(["--default_ood", "--id", id_name])  # no --shared, --out: nothing is unpacked
        printed = capsys.readouterr().out
        assert printed == " ".join(shared_archives.default_ood_sets(id_name)) + "\n"
        # OpenOOD v1.5's composition: near-OOD (the other CIFAR, TinyImageNet), then far-OOD
        assert printed.split() == [first, "TinyImageNet", "MNIST", "SVHN", "Textures", "MiniPlaces"]
    with pytest.raises(SystemExit) as exit_info:
        unpack_shared_data.main(["--id", "cifar10"])
    assert exit_info.value.code == 2 and "--shared and --out are required" in capsys.readouterr().err


@pytest.mark.parametrize("id_name", ["cifar10", "cifar100"])
def test_script_takes_its_default_ood_sets_from_unpack_shared_data(tmp_path, id_name):
    # a FUSION_VAL_OOD that is no OOD set stops the script before any work, printing the OOD_SETS it chose
    result = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, ID=id_name, SHARED_DATA=str(tmp_path), OUT=str(tmp_path / "out"),
                                     FUSION_VAL_OOD="Nothing"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"not one of OOD_SETS ({' '.join(shared_archives.default_ood_sets(id_name))})" in result.stderr
    assert not (tmp_path / "out").exists()


# --- run record -------------------------------------------------------------------------------

def test_a_rerun_may_not_change_settings_that_change_results():
    previous = {"MODEL": "BiT-M-R50x1", "STEPS_CLS": "3000", "WORKERS": "8"}
    run_record.check_same_run(previous, dict(previous, WORKERS="2"))
    with pytest.raises(ValueError, match="STEPS_CLS: '3000' -> '100'"):
        run_record.check_same_run(previous, dict(previous, STEPS_CLS="100"))


def test_a_rerun_may_add_seeds_and_ablations_but_not_change_them():
    previous = {"SEEDS": "0", "DFB_ABLATIONS": "a|--x 1"}
    run_record.check_same_run(previous, {"SEEDS": "0 1 2", "DFB_ABLATIONS": "a|--x 1\nb|"})
    with pytest.raises(ValueError, match="SEEDS"):
        run_record.check_same_run(previous, dict(previous, SEEDS="1 0"))
    with pytest.raises(ValueError, match="DFB_ABLATIONS"):
        run_record.check_same_run(previous, dict(previous, DFB_ABLATIONS="a|--x 2"))


def test_a_run_recorded_before_tta_existed_resumes_without_tta_only():
    previous = {"MODEL": "ResNetV2-Tiny"}  # eval.py then had one forward per image
    run_record.check_same_run(previous, dict(previous, TTA="none"))
    with pytest.raises(ValueError, match="TTA: None -> 'flip'"):
        run_record.check_same_run(previous, dict(previous, TTA="flip"))


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


def synthetic_run(run_dir, seeds=("0", "1"), legacy_background=False, sets=("SetA", "SetB")):
    """A run folder as scripts/reproduce_small.sh leaves it, with made-up numbers: two base scores,
    two OOD sets, DFB seeds `seeds`; metric j of method m on set o is (10 m + 3 o + j) / 100 on the
    classifier, + 0.05 for x on the DFB net, + 0.2 + 0.01 * seed for DFB-m."""
    base, sets = ["MSP", "Energy"], list(sets)

    def row(method, m, o, shift=0.0):
        return [method, "cifar10_test", sets[o], *(f"{(10 * m + 3 * o + j) / 100 + shift:.6f}" for j in range(4))]
    oods = range(len(sets))
    write_csv(run_dir / "results_cls" / "results.csv", [row(b, m, o) for m, b in enumerate(base) for o in oods])
    for s in seeds:
        write_csv(run_dir / f"results_dfb_seed{s}" / "results.csv",
                  [row(b, m, o, 0.05) for m, b in enumerate(base) for o in oods]
                  + [row(f"DFB-{b}", m, o, 0.2 + 0.01 * int(s)) for m, b in enumerate(base) for o in oods]
                  + [row("Background", 7, o) for o in oods]
                  + ([] if legacy_background else [row("Background[-z_bg]", 8, o) for o in oods]))
        write_json(run_dir / f"results_dfb_seed{s}" / "accuracy.json",
                   {"id_dataset": "cifar10_test", "top1": 0.79 + 0.01 * int(s), "images": 100})
        write_json(run_dir / f"results_dfb_seed{s}" / "fusion_selection.json",
                   {"validation": "held-out training images",
                    **({} if legacy_background else {"Background": {"sign": -1, "validation_auroc": 0.6}}),
                    **{f"DFB-{b}[{mode}]": {"sign": 1 if b == "MSP" else -1, "temperature": 0.5,
                                            "validation_auroc": 0.7} for b in base for mode in FUSIONS}})
        write_json(run_dir / "runs" / f"dfb_seed{s}" / "final_metrics.json",
                   {"test_top1": 0.79, "pixel_accuracy": 0.75 + 0.01 * int(s)})
    write_json(run_dir / "stage_times.json", {stage: 1.5 for stage in ["data", "train_cls", "make_cam", "eval_cls"]
                                              + [f"{x}_dfb_seed{s}" for s in seeds for x in ("train", "eval")]})
    write_json(run_dir / "run_info.json", {"command": "BATCH=8 bash scripts/reproduce_small.sh",
                                           "settings": {"BATCH": "8", "PRETRAINED": "none", "SEEDS": "0 1 2"},
                                           "git_commit": "abc", "cpu": "Some CPU",
                                           "device": "NVIDIA H100 80GB HBM3", "torch": "2.x", "python": "3.11",
                                           "date_utc": "2026-01-01 00:00:00"})
    write_json(run_dir / "data_manifest.json", {
        "shared": "/shared", "id": {"cifar10": {"archive": "cifar10.tar", "images": {"train": 40, "test": 20}}},
        "ood": {name: {"archive": f"{name}.tar", "content": f"{name} images", "stands_for": "X", "images": {"test": 9}}
                for name in sets}})
    write_json(run_dir / "results_cls" / "accuracy.json", {"id_dataset": "cifar10_test", "top1": 0.81, "images": 100})
    write_json(run_dir / "runs" / "cls" / "final_metrics.json", {"test_top1": 0.81, "val_top1": 0.8})
    write_json(run_dir / "masks" / "train" / "summary.json",
               {"images_total": 50, "images_computed": 50, "images_skipped": 0, "mean_foreground_fraction": 0.4,
                "empty_foreground": 2, "classifier_accuracy_on_split": 0.9, "labeled": False,
                "scales": [1.0, 0.5], "sigma": 4.0, "threshold": 0.5, "resolution": 64})
    figure = run_dir / "results_dfb_seed0" / "figures" / "roc_SetA.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"png")
    return base, sets


def table_rows(report, heading):
    """{first cell: cells} of the Markdown table under `heading`."""
    section = report.split(heading + "\n", 1)[1].split("\n#", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows}


def test_report_groups_the_ood_sets_as_openood(tmp_path):
    # each OOD set's group is a field of its entry: the CIFARs and TinyImageNet near-OOD, the rest far-OOD, as
    # OpenOOD v1.5
    assert {name for name, ood in shared_archives.OOD_SETS.items() if ood.openood_group == "near"} == \
        {"CIFAR10", "CIFAR100", "TinyImageNet"}
    assert {ood.openood_group for ood in shared_archives.OOD_SETS.values()} == set(shared_archives.OPENOOD_GROUPS)
    run_dir = tmp_path / "run"
    # two sets per group, interleaved, so that neither the first nor the last set of a group is its mean (both
    # CIFARs are OOD sets only here: a run has one of them as ID), and a set with no group
    synthetic_run(run_dir, sets=("CIFAR100", "SVHN", "CIFAR10", "MNIST", "SetX"))
    report = results_report.build_report(run_dir, run_dir / "RESULTS.md", grids=False)
    heading = "### Grouped as OpenOOD v1.5 groups CIFAR's OOD sets"
    assert "near-OOD: CIFAR100, CIFAR10; far-OOD: SVHN, MNIST" in report
    assert "Not grouped (no OpenOOD group in `datasets/shared_archives.py`): SetX." in report
    groups = table_rows(report, heading)
    # columns: near AUROC, near FPR95, far AUROC, far FPR95. Metric j of MSP (m = 0) on set o is (3 o + j) / 100
    # (AUROC j = 1, FPR95 j = 0): near (o = 0, 2) AUROC (1 + 7) / 2 = 4 %, FPR95 (0 + 6) / 2 = 3 %; far (o = 1, 3)
    # AUROC (4 + 10) / 2 = 7 %, FPR95 (3 + 9) / 2 = 6 % (SetX, o = 4, would make them 9 and 8)
    assert groups["MSP · classifier"] == ["4.00", "3.00", "7.00", "6.00"]
    # DFB-MSP adds 20 + seed points (seeds 0, 1): the group means of 24 and 25, 23 and 24, ...; sample std 0.71
    assert groups["DFB-MSP"] == ["24.50 ± 0.71", "23.50 ± 0.71", "27.50 ± 0.71", "26.50 ± 0.71"]
    # the background (m = 7, no shift): near AUROC (71 + 77) / 2, far (74 + 80) / 2
    assert groups["Background (direction chosen on validation data)"] == ["74.00 ± 0.00", "73.00 ± 0.00",
                                                                         "77.00 ± 0.00", "76.00 ± 0.00"]


def test_report_names_no_absolute_path_of_this_machine(tmp_path):
    run_dir = tmp_path / "run"
    synthetic_run(run_dir)
    info = json.loads((run_dir / "run_info.json").read_text())
    shared = f"{REPO.parent}/shared/data"
    info["command"] = f"SHARED_DATA={shared} OUT={REPO}/runs/x bash scripts/reproduce_small.sh"
    info["settings"]["SHARED_DATA"] = shared
    write_json(run_dir / "run_info.json", info)
    manifest = json.loads((run_dir / "data_manifest.json").read_text())
    write_json(run_dir / "data_manifest.json", {**manifest, "shared": shared})
    report = results_report.build_report(run_dir, run_dir / "RESULTS.md", grids=False)
    assert str(REPO) not in report and str(REPO.parent / "shared") not in report
    assert "`SHARED_DATA=../shared/data OUT=runs/x bash scripts/reproduce_small.sh`" in report
    assert "Unpacked from the shared archives in `../shared/data`" in report


def test_report_of_a_synthetic_run(tmp_path):
    run_dir = tmp_path / "run"
    synthetic_run(run_dir)
    report = results_report.build_report(run_dir, run_dir / "RESULTS.md", grids=False)

    set_b = table_rows(report, "### SetB")
    # Energy (m = 1) on SetB (o = 1): metrics 0.13..0.16 on the classifier; DFB-x seeds 0.33.. and 0.34..
    assert set_b["Energy · classifier"] == ["13.00", "14.00", "15.00", "16.00"]
    assert set_b["Energy · DFB net"] == ["18.00 ± 0.00", "19.00 ± 0.00", "20.00 ± 0.00", "21.00 ± 0.00"]
    assert set_b["DFB-Energy"][1] == "34.50 ± 0.71"  # mean of 34, 35; sample std 0.707
    assert set_b["Background (direction chosen on validation data)"][1] == "74.00 ± 0.00"
    background = table_rows(report, "### Background alone, AUROC↑ per OOD set")
    assert background["Background (direction chosen on validation data)"] == ["71.00 ± 0.00", "74.00 ± 0.00"]
    assert background["Background[−z_bg] (one fixed direction, diagnostic)"] == ["81.00 ± 0.00", "84.00 ± 0.00"]
    average = table_rows(report, "### Average over the 2 OOD sets")
    assert average["MSP · classifier"][:2] == ["1.50", "2.50"]
    assert average["DFB-MSP"][1] == "23.00 ± 0.71"
    fusion = table_rows(report, "## Fusion parameters")
    assert fusion["DFB-Energy"] == ["-1, 0.5 (70.00)", "-1, 0.5 (70.00)"]
    assert fusion["Background alone (s only)"] == ["-1 (60.00)", "-1 (60.00)"]
    assert '`validation` = `"held-out training images"`' in report
    beats = table_rows(report, "## Does DFB-x beat x?")
    # +20.5 points over the classifier, std 0.71: beyond the 2-std rule for both scores
    assert beats["SetA"] == ["2 of 2", "MSP +20.50, Energy +20.50", "2 of 2", "MSP +15.50, Energy +15.50"]
    assert "pending (not finished when this report was written): seed 2" in report
    assert "never on any of the OOD sets above" in report
    assert "**from scratch**" in report and "NVIDIA H100 80GB HBM3" in report and "Some CPU" in report
    assert "| train_dfb_seed1 | DFB network (train.py --task dfb), seed 1 | 1.5 |" in report
    assert "| **total** |  | **12.0** |" in report
    assert "[results_dfb_seed0/figures/roc_SetA.png](results_dfb_seed0/figures/roc_SetA.png)" in report
    assert table_rows(report, "## Data")["SetB"] == ["SetB.tar", "SetB images; stands for X", "test 9"]
    dense = table_rows(report, "## ID accuracy (cifar10_test) and dense quality")
    assert dense["mask pixel accuracy"] == ["75.00", "76.00", "75.50 ± 0.71"]
    assert dense["val top-1 (held-out training images)"] == ["80.00", "runs/cls/final_metrics.json"]


def test_the_caveat_warns_that_tinyimagenet_is_no_ood_set_for_weights_pretrained_on_it():
    pretrained = {"PRETRAINED": "pretrained/ResNetV2-Tiny-TIN.npz", "OOD_SETS": "CIFAR100 TinyImageNet MNIST"}
    assert "**The TinyImageNet row is no OOD result**" in results_report.caveat(pretrained)
    for settings in (dict(pretrained, PRETRAINED="none"), dict(pretrained, OOD_SETS="CIFAR100 MNIST")):
        assert "TinyImageNet row" not in results_report.caveat(settings)


def test_report_of_an_evaluation_from_before_the_validated_background(tmp_path):
    synthetic_run(tmp_path, legacy_background=True)  # only "Background" = -z_bg, no direction recorded
    report = results_report.build_report(tmp_path, tmp_path / "RESULTS.md", grids=False)
    assert table_rows(report, "### Background alone, AUROC↑ per OOD set")["Background (−z_bg)"] == \
        ["71.00 ± 0.00", "74.00 ± 0.00"]
    assert "Background alone (s only)" not in table_rows(report, "## Fusion parameters")


def test_report_publishes_figures_beside_the_report(tmp_path):
    run_dir = tmp_path / "run"
    synthetic_run(run_dir)
    out = tmp_path / "docs" / "RESULTS.md"
    results_report.main(["--run_dir", str(run_dir), "--out", str(out), "--figures_to", str(tmp_path / "docs" / "figs"),
                         "--no_grids"])
    assert (tmp_path / "docs" / "figs" / "results_dfb_seed0" / "figures" / "roc_SetA.png").read_bytes() == b"png"
    assert "(figs/results_dfb_seed0/figures/roc_SetA.png)" in out.read_text()


def test_report_names_the_missing_file_and_its_stage(tmp_path):
    synthetic_run(tmp_path)
    (tmp_path / "masks" / "train" / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="summary.json not found: it is written by make_cam.py"):
        results_report.build_report(tmp_path, tmp_path / "RESULTS.md", grids=False)


def test_report_knows_every_fusion_mode():
    assert set(results_report.FORMULAS) == set(FUSIONS)


SCRIPT = REPO / "scripts" / "reproduce_small.sh"


def script_stages():
    """The stage names scripts/reproduce_small.sh times (timed / run_stage <stage> ...), read from the script;
    $suffix stands for a DFB seed or ablation."""
    code = [line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#")]
    return sorted({match for line in code for match in re.findall(r'\b(?:timed|run_stage) "?([A-Za-z]\w*(?:\$\w+)?)', line)})


def script_settings():
    """The settings scripts/reproduce_small.sh records in run_info.json (its SETTINGS array, as bash expands it)."""
    text = SCRIPT.read_text()
    arrays = [re.search(rf"^{name}=\(.*?\)$", text, re.M | re.S).group(0) for name in ("PRETRAIN_VARS", "SETTINGS")]
    listed = subprocess.run(["bash", "-c", "\n".join(arrays) + '\nprintf "%s\\n" "${SETTINGS[@]}"'],
                            capture_output=True, text=True, check=True).stdout.split()
    return listed


def test_report_names_every_stage_the_script_can_time():
    stages = script_stages()
    assert {"pretrain", "data", "from_run", "train_cls", "make_cam", "eval_cls", "train_dfb_$suffix",
            "eval_dfb_$suffix"} <= set(stages), stages  # the reading of the script found them all
    described = {}
    for stage in stages:
        for suffix in ("seed0", "npz"):
            name = stage.replace("$suffix", suffix)
            described[name] = results_report.stage_description(name)
    assert len(set(described.values())) == len(described)  # each stage its own line
    assert described["train_dfb_seed0"].endswith("seed 0") and described["eval_dfb_npz"].endswith("ablation npz")
    with pytest.raises(ValueError, match="unknown stage 'export'"):
        results_report.stage_description("export")


def test_report_names_every_setting_the_script_records(tmp_path):
    settings = script_settings()
    assert {"PRESET", "PRETRAINED", "PRETRAIN_STEPS", "PRETRAIN_PER_CLASS", "DFB_ABLATIONS"} <= set(settings)
    synthetic_run(tmp_path)
    info = json.loads((tmp_path / "run_info.json").read_text())
    info["settings"] = {name: f"value of {name}" for name in settings}
    info["settings"].update(SEEDS="0 1", DFB_ABLATIONS="", PRETRAINED="none", ID="cifar10")
    write_json(tmp_path / "run_info.json", info)
    table = table_rows(results_report.build_report(tmp_path, tmp_path / "RESULTS.md", grids=False), "## Setup")
    assert [name for name in settings if name not in table] == []
    # and every setting the report reads by name is one the script records
    read = set(re.findall(r'settings(?:"\])?(?:\.get\(|\[)"([A-Z_]+)"', Path(results_report.__file__).read_text()))
    assert read and read <= set(settings), read - set(settings)


def tta_setup_line(run_dir):
    report = results_report.build_report(run_dir, run_dir / "RESULTS.md", grids=False)
    return next(line for line in report.split("## Setup", 1)[1].splitlines()
                if line.startswith("- Test-time augmentation"))


def test_report_says_whether_flip_tta_was_applied(tmp_path):
    synthetic_run(tmp_path)  # evaluations from before --tta: no `tta` in accuracy.json, one forward per image
    assert tta_setup_line(tmp_path).endswith("none (one forward per image)")
    folders = ["results_cls", "results_dfb_seed0", "results_dfb_seed1"]
    for folder in folders:
        accuracy = json.loads((tmp_path / folder / "accuracy.json").read_text())
        write_json(tmp_path / folder / "accuracy.json", dict(accuracy, tta="flip"))
    assert ("**flip** (the logits and pooled features of each image are the mean over the image and its horizontal "
            "mirror, the ID test top-1 included), applied identically to the ID test set, every OOD set and the "
            "fusion's validation images") in tta_setup_line(tmp_path)
    accuracy = json.loads((tmp_path / "results_cls" / "accuracy.json").read_text())
    write_json(tmp_path / "results_cls" / "accuracy.json", dict(accuracy, tta="none"))
    assert tta_setup_line(tmp_path).endswith("**differs between the evaluations**, so their numbers do not compare: "
                                             "flip in `results_dfb_seed0`, `results_dfb_seed1`; none in `results_cls`")


def test_script_passes_tta_to_every_evaluation_and_refuses_a_wrong_one(tmp_path):
    assert "TTA" in script_settings()  # run_info.json records it
    code = [line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#")]
    calls = [i for i, line in enumerate(code) if "$PY eval.py" in line]
    assert calls and all('--tta "$TTA"' in " ".join(code[i:i + 3]) for i in calls), [code[i] for i in calls]
    result = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, TTA="mirror", SHARED_DATA=str(tmp_path), OUT=str(tmp_path / "out")),
                            timeout=60)
    assert result.returncode == 2 and "TTA=mirror: expected none, flip or flip_translate (eval.py --tta)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_report_of_a_run_that_pretrained_its_npz(tmp_path):
    synthetic_run(tmp_path)
    info = json.loads((tmp_path / "run_info.json").read_text())
    info["settings"]["PRETRAINED"] = "pretrained/body.npz"
    write_json(tmp_path / "run_info.json", info)
    times = json.loads((tmp_path / "stage_times.json").read_text())
    write_json(tmp_path / "stage_times.json", {"pretrain": 30.0, **times})
    write_json(tmp_path / "runs" / "cls" / "final_metrics.json",
               {"test_top1": 0.81, "initialised_from": {"from": "npz", "path": "pretrained/body.npz", "sha256": "ab12"}})
    write_json(tmp_path / "runs" / "pretrain" / "tin" / "final_metrics.json", {"test_top1": 0.4104, "steps": 15000})

    report = results_report.build_report(tmp_path, tmp_path / "RESULTS.md", grids=False)

    assert table_rows(report, "## Wall time per stage")["pretrain"] == [results_report.STAGES["pretrain"], "30.0", "0.50"]
    assert report.index("| pretrain |") < report.index("| data |")  # first, as the script runs it
    line = next(line for line in report.splitlines() if line.startswith("- Pretrained weights:"))
    assert "`pretrained/body.npz`" in line and "15,000 steps" in line and "val top-1 **41.04 %**" in line
    assert "sha256 `ab12`" in line
    (tmp_path / "runs" / "pretrain" / "tin" / "final_metrics.json").unlink()
    write_json(tmp_path / "stage_times.json", times)  # an npz made before the run: no pretrain stage
    report = results_report.build_report(tmp_path, tmp_path / "RESULTS.md", grids=False)
    line = next(line for line in report.splitlines() if line.startswith("- Pretrained weights:"))
    assert "there before this run" in line and "sha256 `ab12`" in line and "val top-1" not in line


# --- the script, end to end at tiny size --------------------------------------------------------

TINY = dict(PRESET="cpu", DEVICE="cpu", RESOLUTION="32", TRAIN_RESIZE="36", BATCH="16", STEPS_CLS="6",
            STEPS_DFB="5", TRAIN_PER_CLASS="12", TEST_PER_CLASS="6", OOD_PER_CLASS="2", WORKERS="0",
            CAM_BATCH="32", EVAL_BATCH="64", KNN_K="3", SEEDS="0 1",
            # two OpenMP threads on two shared cores spin-wait (docs/PERFORMANCE.md)
            OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def preset(name):
    """The variables a preset file sets, as bash sees them."""
    result = subprocess.run(["bash", "-c", f"set -a && source configs/reproduce_{name}.env && env -0"], cwd=REPO,
                            env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True)
    return dict(item.split("=", 1) for item in result.stdout.split("\0") if "=" in item)


def cli_flags(script="train.py"):
    return set(re.findall(r"--\w+", subprocess.run([sys.executable, script, "-h"], cwd=REPO, capture_output=True,
                                                   text=True, check=True).stdout))


def train_flags():
    return cli_flags("train.py")


@pytest.mark.parametrize("name", ["gpu", "cpu", "cpu_tiny64", "cpu_pretrained"])
def test_preset_flags_are_train_py_flags(name):
    values = preset(name)
    used = set(re.findall(r"--\w+", values["CLS_FLAGS"] + " " + values["DFB_FLAGS"]))
    assert used <= train_flags(), f"configs/reproduce_{name}.env uses flags train.py lacks: {used - train_flags()}"
    cam_used = set(re.findall(r"--\w+", values["CAM_FLAGS"]))
    assert cam_used <= cli_flags("make_cam.py"), f"configs/reproduce_{name}.env: CAM_FLAGS {cam_used}"


def run_script(env):
    result = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def auroc_of(folder, method, ood):
    rows = csv.DictReader(io.StringIO((folder / "results.csv").read_text()))
    return 100 * float(next(r["auroc"] for r in rows if r["method"] == method and r["ood_dataset"] == ood))


@pytest.mark.slow
def test_reproduce_small_script_at_tiny_size(shared_data, tmp_path):
    out = tmp_path / "out"
    cpu = preset("cpu")
    # The cpu preset's recipe flags where train.py has them (they land in another change), else none
    supported = set(re.findall(r"--\w+", cpu["CLS_FLAGS"] + cpu["DFB_FLAGS"])) <= train_flags()
    flags = {} if supported else {"CLS_FLAGS": "", "DFB_FLAGS": ""}
    env = dict(os.environ, **TINY, **flags, SHARED_DATA=str(shared_data), OUT=str(out), TRAIN_PAD="2",
               DATA_DIR=str(tmp_path / "data"), DFB_ABLATIONS="small_holdout|--holdout 0.3\n")
    run_script(env)
    # TRAIN_PAD crops the classifier's images from a 2 px reflection padding; the DFB stage keeps TRAIN_RESIZE
    cls_args, dfb_args = (torch.load(out / "runs" / name / "checkpoint.pth.tar", weights_only=False)["args"]
                          for name in ("cls", "dfb_seed0"))
    assert (cls_args["train_pad"], cls_args["train_resize"]) == (2, None)
    assert (dfb_args["train_pad"], dfb_args["train_resize"]) == (0, 36)

    stages = ["data", "train_cls", "make_cam", "eval_cls"] + \
        [f"{x}_dfb_{v}" for v in ("seed0", "seed1", "small_holdout") for x in ("train", "eval")]
    times = json.loads((out / "stage_times.json").read_text())
    assert set(times) == set(stages)
    report = (out / "RESULTS.md").read_text()
    for ood in shared_archives.default_ood_sets("cifar10"):
        table = table_rows(report, f"### {ood}")
        assert set(table) >= {"MSP · classifier", "DFB-Energy", "Mahalanobis · DFB net", "Background (direction chosen on validation data)"}
        assert table["MSP · classifier"][1] == f"{auroc_of(out / 'results_cls', 'MSP', ood):.2f}"
        # mean and sample std over the two seeds, computed here from each seed's results.csv
        a, b = (auroc_of(out / f"results_dfb_seed{s}", "DFB-MSP", ood) for s in (0, 1))
        mean, std = (a + b) / 2, abs(a - b) / 2 ** 0.5
        shown_mean, shown_std = (float(x) for x in table["DFB-MSP"][1].split(" ± "))
        assert shown_mean == pytest.approx(mean, abs=0.006) and shown_std == pytest.approx(std, abs=0.006)
    for heading in ("## Does DFB-x beat x?", "## Fusion parameters", "## Ablations of the DFB stage",
                    "## Diagnostic: which sign would each OOD set have preferred?"):
        assert heading in report
    assert "small_holdout" in table_rows(report, "## Ablations of the DFB stage")
    assert "agreed with the test set's preference in" in report
    assert "![Pseudo masks, one row per class](grid_pseudo_masks.png)" in report
    assert (out / "grid_dense_maps.png").is_file()
    assert (out / "grid_dense_maps_small_holdout.png").is_file()  # one dense grid per ablation too
    assert "![Dense predictions of the ablation small_holdout, one row per set](grid_dense_maps_small_holdout.png)" \
        in report
    assert json.loads((out / "run_info.json").read_text())["device"].startswith("CPU")

    rerun = run_script(env)  # everything done: each stage is skipped and keeps its recorded time
    assert rerun.count("done in an earlier run, skipped") == len(stages) - 1
    again = json.loads((out / "stage_times.json").read_text())
    assert {s: t for s, t in again.items() if s != "data"} == {s: t for s, t in times.items() if s != "data"}

    changed = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, env=dict(env, STEPS_CLS="7"),
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode != 0 and "STEPS_CLS: '6' -> '7'" in changed.stderr


@pytest.mark.slow
def test_dfb_ablation_starts_from_an_earlier_runs_archive_with_a_validation_ood_set(shared_data, tmp_path):
    first = tmp_path / "first"
    data = tmp_path / "data"
    base = dict(os.environ, **dict(TINY, SEEDS="0"), SHARED_DATA=str(shared_data), DATA_DIR=str(data))
    run_script(dict(base, OUT=str(first)))
    # an archive laid out like ../shared/runs/cifar10_cpu_classifier_and_masks.tar.gz: the run folder one level down
    archive = tmp_path / "classifier_and_masks.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for member in ("cls_pretrained_models/classifier.pth.tar", "masks/train", "runs/cls/final_metrics.json"):
            tar.add(first / member, arcname=f"runs/earlier/{member}")

    out = tmp_path / "ablation"
    variants = "preset|--init_from @CLS_CKPT\nscaled|--init_from @CLS_CKPT --scale_range 0.5 2.0"
    result = subprocess.run(["bash", "scripts/dfb_ablation.sh"], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(base, OUT=str(out), FROM_RUN=str(archive), FUSION_VAL_OOD="MNIST",
                                     VARIANTS=variants, SEEDS="0 1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    times = json.loads((out / "stage_times.json").read_text())
    assert "from_run" in times and "train_cls" not in times and "make_cam" not in times
    assert (out / "cls_pretrained_models" / "classifier.pth.tar").read_bytes() == \
        (first / "cls_pretrained_models" / "classifier.pth.tar").read_bytes()
    # MNIST chose the fusions and is in no table
    for folder in ("results_cls", "results_dfb_seed0", "results_dfb_scaled"):
        assert "MNIST" not in (out / folder / "results.csv").read_text()
    recorded = json.loads((out / "results_dfb_scaled" / "fusion_selection.json").read_text())
    assert recorded["validation_images"]["validation_ood"]["path"].endswith("MNIST/test")
    assert torch_load_args(out / "runs" / "dfb_scaled" / "checkpoint.pth.tar")["scale_range"] == [0.5, 2.0]
    tables = (out / "ABLATION.md").read_text()
    assert "| seed0 |" in tables and "| scaled |" in tables and "SVHN: background AUROC" in tables
    assert "MNIST" not in tables and "blob IoU" in tables
    # SEEDS: the first variant with every seed, the others with the first only
    assert (out / "results_dfb_seed1" / "results.csv").exists() and "| seed1 |" not in tables
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["cls", "dfb_scaled", "dfb_seed0", "dfb_seed1"]

    bad = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, capture_output=True, text=True,
                         env=dict(base, OUT=str(tmp_path / "bad"), FROM_RUN=str(tmp_path / "nothing_here")))
    assert bad.returncode == 2 and "FROM_RUN" in bad.stderr and "classifier.pth.tar" in bad.stderr


def torch_load_args(path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=False)["args"]


@pytest.mark.slow
def test_pretrained_preset_fine_tunes_from_the_npz_and_its_ablation_starts_from_it(shared_data, tmp_path):
    """PRESET=cpu_pretrained at tiny size with CIFAR-100 as ID, with the body of a random classifier as its
    npz: the classifier and the ablation npz start from that file, the DFB seed from the classifier, each
    recorded with its sha256; without the npz (and PRETRAIN_WHEN_MISSING=0) the script stops before any work."""
    from models.resnetv2 import create_model
    npz = tmp_path / "body.npz"
    torch.manual_seed(0)
    np.savez(npz, **create_model("ResNetV2-Tiny", head_size=3).npz_arrays())
    out = tmp_path / "out"
    env = dict(os.environ, **dict(TINY, PRESET="cpu_pretrained", SEEDS="0"), SHARED_DATA=str(shared_data),
               OUT=str(out), DATA_DIR=str(tmp_path / "data"), PRETRAINED=str(npz), OOD_SETS="CIFAR10 MNIST",
               ID="cifar100")
    run_script(env)
    report = (out / "RESULTS.md").read_text()
    assert report.startswith("# DFB on CIFAR-100") and "ID positives: the CIFAR-100 test split" in report
    assert "near-OOD: CIFAR10; far-OOD: MNIST" in report
    assert torch.load(out / "runs" / "dfb_seed0" / "checkpoint.pth.tar", map_location="cpu",
                      weights_only=False)["head_size"] == 101
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()
    started = {name: json.loads((out / "runs" / name / "final_metrics.json").read_text())["initialised_from"]
               for name in ("cls", "dfb_seed0", "dfb_npz")}
    assert started["cls"] == {"from": "npz", "path": str(npz), "sha256": digest}
    assert started["dfb_npz"] == started["cls"]
    assert started["dfb_seed0"]["from"] == "classifier"
    assert "npz" in table_rows(report, "## Ablations of the DFB stage")

    missing = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, capture_output=True, text=True,
                             env=dict(env, OUT=str(tmp_path / "none"), PRETRAINED=str(tmp_path / "absent.npz"),
                                      PRETRAIN_WHEN_MISSING="0"), timeout=600)
    assert missing.returncode == 2 and "PRETRAINED=" in missing.stderr and "scripts/pretrain.sh" in missing.stderr
    assert not (tmp_path / "none" / "stage_times.json").exists()  # stopped before the data stage


@pytest.mark.slow
def test_pretrained_preset_without_its_npz_pretrains_first_and_reports_it(shared_data, tmp_path):
    """A fresh clone's PRESET=cpu_pretrained run, at tiny size: the npz is absent, so the pretrain stage writes it
    (scripts/pretrain.sh on the shared tin_train.tar.gz), then the flow runs to the written report, which names
    the stage, the pretraining's val top-1 and the npz's sha256."""
    npz = tmp_path / "pretrained" / "tin.npz"
    out = tmp_path / "out"
    env = dict(os.environ, **dict(TINY, PRESET="cpu_pretrained", SEEDS="0"), SHARED_DATA=str(shared_data),
               OUT=str(out), DATA_DIR=str(tmp_path / "data"), PRETRAINED=str(npz), OOD_SETS="CIFAR100 MNIST",
               DFB_ABLATIONS="", PRETRAIN_DATA_DIR=str(tmp_path / "tin_data"), PRETRAIN_PER_CLASS="3",
               PRETRAIN_STEPS="5", PRETRAIN_BATCH="16", PRETRAIN_RESOLUTION="32", PRETRAIN_TRAIN_RESIZE="36")
    run_script(env)

    assert npz.is_file()
    # pretrain.sh got its own settings: Tiny ImageNet in PRETRAIN_DATA_DIR (the first 3 images of each class,
    # <wnid>_0 held out as val), not in the run's DATA_DIR
    assert len(list((tmp_path / "tin_data" / "tin" / "val").rglob("*.JPEG"))) == 202
    assert not (tmp_path / "data" / "tin").exists()
    pretraining = json.loads((out / "runs" / "pretrain" / "tin" / "final_metrics.json").read_text())
    assert pretraining["steps"] == 5
    times = json.loads((out / "stage_times.json").read_text())
    assert list(times)[:2] == ["pretrain", "data"]
    report = (out / "RESULTS.md").read_text()
    assert table_rows(report, "## Wall time per stage")["pretrain"][:2] == [results_report.STAGES["pretrain"],
                                                                            f"{times['pretrain']:.1f}"]
    line = next(line for line in report.splitlines() if line.startswith("- Pretrained weights:"))
    assert f"val top-1 **{100 * pretraining['test_top1']:.2f} %**" in line
    assert f"sha256 `{hashlib.sha256(npz.read_bytes()).hexdigest()}`" in line
    assert table_rows(report, "## Setup")["PRETRAIN_STEPS"] == ["`5`"]
