"""Bad inputs, faults and stale state, through the three CLIs as a user runs them: one test per
row of docs/ROBUSTNESS.md. Errors must be one line naming the file or flag, exit status 2 and
no outputs; killed runs (a real SIGKILL) must resume and lose nothing; caches and masks must
never be reused for another checkpoint or other data."""
import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import make_cam
import train
from datasets.synthetic import generate_benchmark
from tests.helpers import assert_input_error, run_cli

REPO = Path(__file__).resolve().parents[1]
K = 6
TINY = ["--model", "ResNetV2-Tiny", "--resolution", "32", "--pretrained", "none", "--device", "cpu",
        "--workers", "0", "--batch", "16", "--eval_every", "0", "--save_every", "10"]
CLS_STEPS = "60"


def cls_args(datadir, logdir, name="cls", *extra):
    return ["--task", "cls", "--datadir", str(datadir), "--logdir", str(logdir), "--name", name,
            "--steps", CLS_STEPS, *TINY, *extra]


def cam_args(dataset, model_path, *extra):
    return [f"--dataset={dataset}", f"--model_path={model_path}", f"--head_size={K}", "--device=cpu",
            "--workers=0", "--batch=4", "--overlays=0", *extra]


def eval_args(model_path, id_dir, ood_dirs, logdir, *extra):
    return ["--model_path", str(model_path), "--id_train_path", str(id_dir / "train"), "--id_test_path",
            str(id_dir / "test"), "--ood_path", *map(str, ood_dirs), "--logdir", str(logdir), "--device", "cpu",
            "--workers", "0", "--batch", "8", "--knn_k", "5", "--dense_maps", "0", *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synthetic benchmark, a classifier, its masks and a dfb network, made once."""
    root = tmp_path_factory.mktemp("robustness")
    sets = generate_benchmark(root / "data", seed=1, size=32, n_train_per_class=100, n_test_per_class=20,
                              n_ood=100, progress=False)
    id_dir = sets["id_train"].parent
    train.main(cls_args(sets["id_train"], root / "runs", "cls", "--export", str(root / "cls.pth.tar")))
    make_cam.main(cam_args(sets["id_train"], root / "cls.pth.tar"))
    train.main(["--task", "dfb", "--datadir", str(sets["id_train"]), "--logdir", str(root / "runs"),
                "--name", "dfb", "--steps", "20", *TINY])
    ood = [sets["ood"]["SynthNewBackgrounds"], sets["ood"]["SynthClutter"]]
    eval_cli.main(eval_args(root / "cls.pth.tar", id_dir, ood, root / "eval_cls"))
    return dict(root=root, id_dir=id_dir, train=sets["id_train"], test=sets["id_test"], ood=ood,
                cls=root / "cls.pth.tar", dfb=root / "runs" / "dfb" / "checkpoint.pth.tar")


def copy_split(world, tmp_path, with_masks=False):
    """A private copy of the ID data set (train, test and, if asked, the train masks)."""
    copy = tmp_path / "synthetic"
    shutil.copytree(world["train"], copy / "train")
    shutil.copytree(world["test"], copy / "test")
    if with_masks:
        shutil.copytree(world["train"].parent / "train_mask", copy / "train_mask")
    return copy


def first_image(folder):
    return sorted(Path(folder).glob("*/*.png"))[0]


# -- 1. bad input -------------------------------------------------------------------------
def test_missing_dataset_folder(tmp_path, capsys):
    assert_input_error(train, cls_args(tmp_path / "nowhere", tmp_path), capsys, str(tmp_path / "nowhere"),
                       "does not exist", "<root>/<class>/<image>")
    assert not (tmp_path / "cls").exists()


def test_folder_without_images(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")  # images but no class folders
    assert_input_error(train, cls_args(tmp_path / "flat", tmp_path), capsys, "has no class sub-folders",
                       f"its 1 images lie directly inside it: move them into one sub-folder, e.g. {tmp_path / 'flat' / 'all'}")
    (tmp_path / "empty_class" / "cat").mkdir(parents=True)
    assert_input_error(train, cls_args(tmp_path / "empty_class", tmp_path), capsys,
                       str(tmp_path / "empty_class" / "cat"), "holds no images")


@pytest.mark.slow
def test_id_train_and_test_with_different_class_folders(world, tmp_path, capsys):
    data = copy_split(world, tmp_path)
    shutil.copytree(sorted((data / "test").iterdir())[0], data / "test" / "zebra")
    assert_input_error(train, cls_args(data / "train", tmp_path, "x", "--test_datadir", str(data / "test")),
                       capsys, str(data / "test"), "unexpected ['zebra']")
    assert not (tmp_path / "x" / "checkpoint.pth.tar").exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_corrupt_image_fails_with_its_path_or_is_skipped_on_request(world, tmp_path, capsys, damage):
    data = copy_split(world, tmp_path)
    victim = first_image(data / "train")
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:len(victim.read_bytes()) // 2])
    else:
        victim.write_text("<html>404 not found</html>")
    assert_input_error(train, cls_args(data / "train", tmp_path / "runs"), capsys, str(victim), "--skip_corrupt")
    assert not (tmp_path / "runs" / "cls" / "checkpoint.pth.tar").exists()

    status, out, _ = run_cli(train, cls_args(data / "train", tmp_path / "runs", "cls", "--skip_corrupt",
                                             "--stop_after", "2"), capsys)
    assert status == 0
    assert f"left out 1 unreadable images of {data / 'train'}: {victim}" in out
    assert "images=599" in out


@pytest.mark.slow
def test_corrupt_image_met_by_a_loader_worker_mid_training(world, tmp_path, capsys):
    """Without the in-memory copy the image is first decoded by a worker, during training."""
    data = copy_split(world, tmp_path)
    victim = sorted((data / "train").glob("*/*.png"))[-1]
    victim.write_bytes(victim.read_bytes()[:300])
    argv = cls_args(data / "train", tmp_path / "runs", "cls", "--data_on_device", "never")
    argv[argv.index("--workers") + 1] = "1"
    assert_input_error(train, argv, capsys, f"cannot decode image file {victim}: image file is truncated",
                       "--skip_corrupt")


@pytest.mark.slow
def test_grayscale_rgba_palette_16bit_and_odd_sized_images_just_work(world, tmp_path, capsys):
    odd = tmp_path / "Odd" / "test" / "things"
    odd.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, (mode, size) in enumerate([("L", (17, 31)), ("LA", (40, 23)), ("RGBA", (32, 32)), ("P", (64, 48)),
                                          ("1", (9, 9)), ("CMYK", (50, 20)), ("RGB", (101, 77))]):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(
            odd / f"{index}.{'jpg' if mode == 'CMYK' else 'png'}")
    Image.fromarray(rng.integers(0, 65536, (20, 30), dtype=np.uint16)).save(odd / "sixteen_bit.png")
    status, _, err = run_cli(eval_cli, eval_args(world["cls"], world["id_dir"], [odd.parent], tmp_path / "e"), capsys)
    assert status == 0, err
    assert np.load(tmp_path / "e" / "logits" / "Odd.npy").shape == (8, K)


@pytest.mark.slow
def test_masks_missing_for_some_images(world, tmp_path, capsys):
    data = copy_split(world, tmp_path, with_masks=True)
    removed = sorted((data / "train_mask").glob("*/*.png"))[:5]
    for path in removed:
        path.unlink()
    assert_input_error(train, ["--task", "dfb", "--datadir", str(data / "train"), "--logdir", str(tmp_path),
                               "--name", "d", *TINY], capsys, "5 of 600 masks are missing", str(removed[0]),
                       "make_cam.py --dataset=")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["other_size", "other_aspect", "bad_value"])
def test_mask_of_wrong_size_or_values(world, tmp_path, capsys, fault):
    data = copy_split(world, tmp_path, with_masks=True)
    masks = sorted((data / "train_mask").glob("*/*.png"))
    victim = masks[7]
    if fault == "other_size":
        Image.new("L", (16, 16), K).save(victim)
        expected = ["share one size", str(victim), "16x16"]
    elif fault == "other_aspect":
        for path in masks:
            Image.new("L", (32, 16), K).save(path)
        expected = ["32x16", "aspect ratio"]
    else:
        values = np.array(Image.open(victim))
        values[3, 3] = 77
        Image.fromarray(values).save(victim)
        expected = [str(victim), "value 77", f"{K} (background)", "255 (ignore)"]
    assert_input_error(train, ["--task", "dfb", "--datadir", str(data / "train"), "--logdir", str(tmp_path),
                               "--name", "d", *TINY], capsys, *expected)
    assert not (tmp_path / "d" / "checkpoint.pth.tar").exists()


@pytest.mark.slow
def test_head_size_not_matching_the_checkpoint(world, tmp_path, capsys):
    argv = cam_args(world["train"], world["cls"], "--out", str(tmp_path / "m"))
    argv[2] = "--head_size=10"
    assert_input_error(make_cam, argv, capsys, "--head_size 10", str(world["cls"]), "6 classes")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_cls_and_dfb_checkpoints_in_the_wrong_place(world, tmp_path, capsys):
    # make_cam needs the classifier's CAMs: a dfb network is refused
    argv = cam_args(world["train"], world["dfb"], "--out", str(tmp_path / "m"))
    argv[2] = f"--head_size={K + 1}"
    assert_input_error(make_cam, argv, capsys, "is a 'dfb' checkpoint", "needs a 'cls' checkpoint")
    # a dfb run whose folder holds a classifier's checkpoint is refused, not resumed
    shutil.copytree(world["root"] / "runs" / "cls", tmp_path / "runs" / "mixed")
    assert_input_error(train, ["--task", "dfb", "--datadir", str(world["train"]), "--logdir", str(tmp_path / "runs"),
                               "--name", "mixed", *TINY], capsys, "is a 'cls' checkpoint", "needs a 'dfb'")
    # eval given a classifier is meaningful: the base scores without fusion
    rows = (world["root"] / "eval_cls" / "results.csv").read_text()
    assert "MSP" in rows and "DFB-" not in rows


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "truncated", "npz"])
def test_file_that_is_not_a_checkpoint(world, tmp_path, capsys, kind):
    fake = tmp_path / "model.pth.tar"
    if kind == "text":
        fake.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        fake.write_bytes(world["cls"].read_bytes()[:5000])
    else:
        np.savez(fake.with_suffix(".npz"), a=np.zeros(3))
        fake = fake.with_suffix(".npz")
    assert_input_error(eval_cli, eval_args(fake, world["id_dir"], world["ood"], tmp_path / "e"), capsys,
                       str(fake), "is not a readable PyTorch checkpoint")
    assert not (tmp_path / "e" / "results.csv").exists()


@pytest.mark.slow
def test_bit_npz_with_missing_keys_or_of_another_kind(world, tmp_path, capsys):
    partial = tmp_path / "partial.npz"
    np.savez(partial, **{"resnet/root_block/standardized_conv2d/kernel": np.zeros((7, 7, 3, 32), np.float32)})
    argv = cls_args(world["train"], tmp_path)
    argv[argv.index("--pretrained") + 1] = str(partial)
    assert_input_error(train, argv, capsys, str(partial), "keys missing", "does the model name match")
    argv[argv.index("--pretrained") + 1] = str(world["cls"])  # a torch checkpoint is a zip file too
    assert_input_error(train, argv, capsys, str(world["cls"]), "none of the", "BiT arrays")
    argv[argv.index("--pretrained") + 1] = str(world["root"] / "eval_cls" / "results.csv")
    assert_input_error(train, argv, capsys, "is not a BiT .npz archive")


@pytest.mark.slow
def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(world, tmp_path, capsys):
    argv = cls_args(world["train"], tmp_path, "diverge", "--base_lr", "1e12", "--save_every", "1")
    line = assert_input_error(train, argv, capsys, "training stopped", "Lower --base_lr")
    assert re.search(r"(loss is (nan|inf|-inf) at step \d+|the update of step \d+ made the weights non-finite);", line)
    kept = int(re.search(r"the last checkpoint \(step (\d+)\) is kept", line).group(1))
    checkpoint = torch.load(tmp_path / "diverge" / "checkpoint.pth.tar", weights_only=False)
    assert checkpoint["step"] == kept > 0
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())


@pytest.mark.slow
def test_ood_set_that_is_the_id_test_set_warns(world, tmp_path, capsys):
    same = tmp_path / "Suspicious" / "test"
    shutil.copytree(world["test"], same)
    status, out, _ = run_cli(eval_cli, eval_args(world["cls"], world["id_dir"], [same], tmp_path / "e"), capsys)
    assert status == 0
    assert "WARNING: 120 of 120 images of the OOD set Suspicious are byte-identical to images of the ID test " \
           "set synthetic_test (the same folder given twice?)" in out


# -- 2. no loss on interruption ----------------------------------------------------------------
def start(script, argv, log):
    return subprocess.Popen([sys.executable, script, *argv], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def kill_when(process, ready, timeout=180):
    """SIGKILL `process` as soon as ready() holds; fails if it ends on its own first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the process finished before it could be killed; give it more work"
        assert time.monotonic() < deadline, "timed out waiting for the process"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def finish(script, argv, log):
    assert subprocess.run([sys.executable, script, *argv], cwd=REPO, stdout=log,
                          stderr=subprocess.STDOUT).returncode == 0, Path(log.name).read_text()[-3000:]


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(world, tmp_path):
    argv = cls_args(world["train"], tmp_path)
    checkpoint = tmp_path / "cls" / "checkpoint.pth.tar"
    with open(tmp_path / "log.txt", "w") as log:
        kill_when(start("train.py", argv, log), checkpoint.is_file)
        killed_at = torch.load(checkpoint, weights_only=False)["step"]
        assert 0 < killed_at < int(CLS_STEPS)
        finish("train.py", argv, log)
    resumed = torch.load(checkpoint, weights_only=False)
    uninterrupted = torch.load(world["root"] / "runs" / "cls" / "checkpoint.pth.tar", weights_only=False)
    assert resumed["step"] == int(CLS_STEPS) and resumed["finished"]
    assert "resuming at step" in (tmp_path / "log.txt").read_text()
    for name, value in uninterrupted["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-4, atol=1e-5)
    assert not list((tmp_path / "cls").glob(".*.tmp*"))


@pytest.mark.slow
def test_killed_make_cam_leaves_no_truncated_mask_and_completes(world, tmp_path):
    out = tmp_path / "masks"
    argv = cam_args(world["train"], world["cls"], "--out", str(out))

    def complete_masks():  # not the hidden temporary (.<stem>.<random>.tmp.png) of a write in progress
        return sorted(path for path in out.glob("*/*.png") if not path.name.startswith("."))

    with open(tmp_path / "log.txt", "w") as log:
        kill_when(start("make_cam.py", argv, log), lambda: len(complete_masks()) >= 40)
        survivors = complete_masks()
        assert 40 <= len(survivors) < 600
        for path in survivors:  # every mask on disk is complete
            with Image.open(path) as mask:
                mask.load()
        finish("make_cam.py", argv, log)
    reference = world["train"].parent / "train_mask"
    written = sorted(out.glob("*/*.png"))
    assert len(written) == 600 and not list(out.glob("**/.*.tmp*"))
    for path in written:  # the same masks as an uninterrupted run
        assert np.array_equal(np.array(Image.open(path)), np.array(Image.open(reference / path.relative_to(out))))


@pytest.mark.slow
def test_killed_eval_reuses_only_complete_caches(world, tmp_path):
    logdir = tmp_path / "e"
    argv = eval_args(world["cls"], world["id_dir"], world["ood"], logdir, "--odin_epsilon", "0.001")

    def complete_caches():  # not the hidden temporaries (.name.xxx.tmp.npz) of a write in progress
        return {path.name for path in (logdir / "cache").glob("*.npz") if not path.name.startswith(".")}

    with open(tmp_path / "log.txt", "w") as log:
        kill_when(start("eval.py", argv, log), lambda: bool(complete_caches()))
        complete = complete_caches()
        assert not (logdir / "results.csv").exists()
    with open(tmp_path / "rerun.txt", "w") as log:
        finish("eval.py", argv, log)
    rerun = (tmp_path / "rerun.txt").read_text()
    for name in complete:
        assert f"[eval] {name.rsplit('-', 1)[0]}: cached" in rerun
    assert "extracted" in rerun  # what was not complete was computed
    assert not list(logdir.glob("**/.*.tmp*"))


@pytest.mark.slow
def test_write_that_fails_like_a_full_disk_leaves_nothing_half_written(world, tmp_path):
    """A file size limit (RLIMIT_FSIZE, no root needed) makes the 16 MB checkpoint write fail the
    way a full disk does; Python ignores SIGXFSZ, so the write returns an error."""
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
    result = subprocess.run([sys.executable, "train.py", *cls_args(world["train"], tmp_path)], cwd=REPO,
                            capture_output=True, text=True, preexec_fn=limit_file_size)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error (train.py): could not write {tmp_path / 'cls' / 'checkpoint.pth.tar'}")
    assert "is the disk full?" in line
    assert not (tmp_path / "cls" / "checkpoint.pth.tar").exists() and not list(tmp_path.glob("**/.*.tmp*"))


# -- 3. no stale results -------------------------------------------------------------------------
@pytest.mark.slow
def test_changed_checkpoint_or_image_is_never_served_from_the_cache(world, tmp_path, capsys):
    data = copy_split(world, tmp_path)
    ood = tmp_path / "Other" / "test"
    shutil.copytree(world["ood"][0], ood)
    logdir = tmp_path / "e"
    assert run_cli(eval_cli, eval_args(world["cls"], data, [ood], logdir), capsys)[0] == 0
    victim = first_image(ood)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(victim)
    _, out, _ = run_cli(eval_cli, eval_args(world["cls"], data, [ood], logdir), capsys)
    assert "synthetic_train: cached" in out and "Other: extracted" in out
    changed_checkpoint = tmp_path / "cls_copy.pth.tar"
    state = torch.load(world["cls"], weights_only=False)
    state["model"]["head.conv.bias"] += 1.0
    torch.save(state, changed_checkpoint)
    _, out, _ = run_cli(eval_cli, eval_args(changed_checkpoint, data, [ood], logdir), capsys)
    assert "cached" not in out


@pytest.mark.slow
def test_damaged_cache_file_is_recomputed(world, tmp_path, capsys):
    logdir = tmp_path / "e"
    argv = eval_args(world["cls"], world["id_dir"], world["ood"][:1], logdir)
    assert run_cli(eval_cli, argv, capsys)[0] == 0
    cache = sorted((logdir / "cache").glob("synthetic_test-*.npz"))[0]
    cache.write_bytes(b"garbage")
    status, out, _ = run_cli(eval_cli, argv, capsys)
    assert status == 0 and f"cache {cache} is unreadable" in out and "synthetic_test: extracted" in out


@pytest.mark.slow
def test_masks_of_another_classifier_are_not_reused(world, tmp_path, capsys):
    out = tmp_path / "masks"
    shutil.copytree(world["train"].parent / "train_mask", out)
    other = tmp_path / "other.pth.tar"
    state = torch.load(world["cls"], weights_only=False)
    state["model"]["head.conv.bias"] += 1.0
    torch.save(state, other)
    assert_input_error(make_cam, cam_args(world["train"], other, "--out", str(out)), capsys,
                       f"600 masks in {out} were made with another classifier_sha256", "--overwrite")
    # same classifier, another threshold: also refused
    assert_input_error(make_cam, cam_args(world["train"], world["cls"], "--out", str(out), "--threshold", "0.3"),
                       capsys, "another threshold")
    status, printed, _ = run_cli(make_cam, cam_args(world["train"], other, "--out", str(out), "--overwrite"), capsys)
    assert status == 0 and "600 to compute" in printed
    assert json.loads((out / "provenance.json").read_text())["classifier_sha256"] != \
        json.loads((world["train"].parent / "train_mask" / "provenance.json").read_text())["classifier_sha256"]


@pytest.mark.slow
def test_resume_on_changed_training_data_is_refused(world, tmp_path, capsys):
    data = copy_split(world, tmp_path)
    argv = cls_args(data / "train", tmp_path / "runs", "cls", "--stop_after", "10")
    assert run_cli(train, argv, capsys)[0] == 0
    first_image(data / "train").unlink()
    assert_input_error(train, argv, capsys, "was trained on other data", "600 images then, 599 now", "--name")


@pytest.mark.slow
def test_rerun_with_other_settings_is_refused_not_resumed(world, tmp_path, capsys):
    argv = cls_args(world["train"], tmp_path / "runs", "cls", "--stop_after", "10")
    assert run_cli(train, argv, capsys)[0] == 0
    other = list(argv)
    other[other.index("--steps") + 1] = "90"
    assert_input_error(train, other, capsys, "belongs to a run with --steps 60 (now 90)", "another --name")
    lower_rate = [*argv, "--base_lr", "0.001"]  # allowed: the way on after a non-finite loss
    status, out, _ = run_cli(train, lower_rate, capsys)
    assert status == 0 and "with --base_lr 0.001 (it ran with 0.003)" in out


@pytest.mark.slow
def test_eval_removes_outputs_of_an_earlier_run_in_the_same_folder(world, tmp_path, capsys):
    logdir = tmp_path / "e"
    shutil.copytree(world["root"] / "eval_cls", logdir)
    first, second = (dataset.parent.name for dataset in world["ood"])
    assert run_cli(eval_cli, eval_args(world["cls"], world["id_dir"], world["ood"][:1], logdir), capsys)[0] == 0
    assert (logdir / "logits" / f"{first}.npy").is_file()
    assert not list(logdir.glob(f"**/{second}.npy")) and not (logdir / "figures" / f"roc_{second}.png").exists()


@pytest.mark.slow
def test_stale_temporaries_of_a_killed_save_are_removed(world, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "cls"
    run_dir.mkdir(parents=True)
    leftover = run_dir / ".checkpoint.pth.x1y2z3.tmp.tar"
    leftover.write_bytes(b"half a checkpoint")
    status, out, _ = run_cli(train, cls_args(world["train"], tmp_path / "runs", "cls", "--stop_after", "1"), capsys)
    assert status == 0 and not leftover.exists() and "removed the unfinished temporary files" in out


@pytest.mark.slow
def test_the_scripts_exit_with_status_2_on_bad_input(tmp_path):
    """The real entry point (python train.py ...), not only main(): status and one stderr line."""
    result = subprocess.run([sys.executable, "train.py", *cls_args(tmp_path / "nowhere", tmp_path)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error (train.py): dataset folder {tmp_path / 'nowhere'} does not exist (expected layout "
        f"<root>/<class>/<image>)"]


def test_every_row_of_the_robustness_table_names_a_test_of_this_file():
    """docs/ROBUSTNESS.md and this file describe the same cases: one test per row, no row untested."""
    rows = [line for line in (REPO / "docs" / "ROBUSTNESS.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| input", "| fault", "| change"))]
    here = set(re.findall(r"^def (test_\w+)", Path(__file__).read_text(), re.M))
    named = [set(re.findall(r"`(test_\w+)", row)) & here for row in rows]
    assert all(named), [row[:60] for row, tests in zip(rows, named) if not tests]
    assert set().union(*named) | {"test_every_row_of_the_robustness_table_names_a_test_of_this_file"} == here

