"""The whole DFB pipeline at tiny size on CPU, through the three CLIs, checking every
contract of docs/CONTRACTS.md on data the test makes itself."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

import eval as eval_cli
import make_cam
import train
from conftest import run_pipeline
from datasets.folder import ImageFolderDataset, list_samples
from datasets.synthetic import generate_benchmark
from test_metrics import brute_force_fpr95
from models.loading import load_network
from utils.ood.fusion import FUSIONS, background_score
from utils.ood.scores import SCORE_CLASSES, energy, msp, odin
from utils.train.main import holdout_split

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    sets = generate_benchmark(root / "data", seed=0, size=32, n_train_per_class=12, n_test_per_class=4,
                              n_ood=16, progress=False)
    outputs = run_pipeline(root, sets["id_train"], sets["id_test"], list(sets["ood"].values()), num_classes=6)
    return dict(root=root, sets=sets, ood_names=sorted(sets["ood"]), **outputs)


@pytest.mark.slow
def test_masks_follow_the_contract(pipeline):
    train_dir = pipeline["sets"]["id_train"]
    mask_root = train_dir.parent / "train_mask"
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    foreground_fractions = []
    for k, name in enumerate(classes):
        images = sorted(p.stem for p in (train_dir / name).iterdir())
        masks = sorted(p.stem for p in (mask_root / name).iterdir())
        assert images == masks
        for stem in masks[:3]:
            mask = np.array(Image.open(mask_root / name / f"{stem}.png"))
            assert mask.dtype == np.uint8 and mask.shape == (32, 32)
            assert set(np.unique(mask)) <= {0, 1, 2, 3, 4, 5, 6}
        foreground_fractions += [np.mean(np.array(Image.open(mask_root / name / f"{stem}.png")) < 6) for stem in masks]
    summary = json.loads((mask_root / "summary.json").read_text())
    assert summary["images_computed"] == 72
    # the mean over the 72 mask files of their fraction of pixels holding a class (value < K = 6)
    assert summary["mean_foreground_fraction"] == pytest.approx(np.mean(foreground_fractions), abs=1e-9)
    assert (mask_root / "overlays.png").is_file()


@pytest.mark.slow
def test_make_cam_skips_existing_masks(pipeline):
    train_dir = pipeline["sets"]["id_train"]
    summary = make_cam.run(make_cam.parse_args([
        f"--dataset={train_dir}", f"--model_path={pipeline['cls_export']}", "--head_size=6", "--device=cpu",
        "--workers=0", "--overlays=0"]))
    assert summary["images_computed"] == 0 and summary["images_skipped"] == 72


@pytest.mark.slow
def test_checkpoints_say_what_they_are(pipeline):
    for name, task, head in (("cls", "cls", 6), ("dfb", "dfb", 7)):
        checkpoint = torch.load(pipeline["root"] / "runs" / name / "checkpoint.pth.tar", weights_only=False)
        for key in ("model", "optim", "step", "args"):
            assert key in checkpoint
        assert checkpoint["task"] == task and checkpoint["head_size"] == head
        assert checkpoint["num_classes"] == 6 and len(checkpoint["classes"]) == 6
        assert checkpoint["model_name"] == "ResNetV2-Tiny" and checkpoint["step"] == 12 and checkpoint["finished"]
        assert checkpoint["model"]["head.conv.weight"].shape[0] == head


@pytest.mark.slow
def test_results_have_every_method_and_fusion(pipeline):
    results = pipeline["results"]
    with open(results / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["method", "id_dataset", "ood_dataset", "fpr95", "auroc", "aupr_in", "aupr_out"]
    methods = {row["method"] for row in rows}
    expected = set(SCORE_CLASSES) | {"Background", "Background[-z_bg]"}
    expected |= {f"DFB-{m}" for m in SCORE_CLASSES} | {f"DFB-{m}[{mode}]" for m in SCORE_CLASSES for mode in FUSIONS}
    assert methods == expected
    for method in methods:
        assert sorted(r["ood_dataset"] for r in rows if r["method"] == method) == pipeline["ood_names"]
    for row in rows:  # every metric recomputed from the saved scores by scikit-learn / a plain loop
        assert row["id_dataset"] == "synthetic_test"
        id_scores = np.load(results / "scores" / row["method"] / "synthetic_test.npy").astype(np.float64)
        ood_scores = np.load(results / "scores" / row["method"] / f"{row['ood_dataset']}.npy").astype(np.float64)
        labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
        expected = {"auroc": roc_auc_score(labels, np.r_[id_scores, ood_scores]),
                    "aupr_in": average_precision_score(labels, np.r_[id_scores, ood_scores]),
                    "aupr_out": average_precision_score(1 - labels, -np.r_[id_scores, ood_scores]),
                    "fpr95": brute_force_fpr95(id_scores, ood_scores)}
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, abs=1e-6), (row["method"], row["ood_dataset"], key)
    # results.md shows each default fusion once: DFB-x, not also its copy DFB-x[logit]
    table_methods = [line.split(" | ")[0].lstrip("| ") for line in (results / "results.md").read_text().splitlines()
                     if line.startswith("| ") and not line.startswith("| method")]
    assert sorted(table_methods) == sorted(methods - {f"DFB-{m}[logit]" for m in SCORE_CLASSES})
    for m in SCORE_CLASSES:
        for name in (f"DFB-{m}", f"DFB-{m}[logit]"):
            assert (results / "scores" / name / "synthetic_test.npy").is_file()
        assert [r["auroc"] for r in rows if r["method"] == f"DFB-{m}"] == \
            [r["auroc"] for r in rows if r["method"] == f"DFB-{m}[logit]"]
    accuracy = json.loads((results / "accuracy.json").read_text())
    labels = np.array([label for _, label in list_samples(pipeline["sets"]["id_test"])])
    logits = np.load(results / "logits" / "synthetic_test.npy")
    assert accuracy["top1"] == pytest.approx(np.mean(logits[:, :6].argmax(1) == labels))
    settings = json.loads((results / "score_settings.json").read_text())
    # ODIN as the official DFB evaluation: T = 2, no input perturbation; results.md says so
    assert settings["KNN"] == {"k": 5} and settings["ODIN"] == {"temperature": 2.0, "epsilon": 0.0}
    notes = (results / "results.md").read_text()
    assert "ODIN temperature=2.0, epsilon=0.0" in notes and "KNN k=5" in notes and "Energy temperature=1.0" in notes
    assert "temperature scaling only" in notes and "Logits and features in fp32" in notes
    for figure in (results / "figures").glob("*.png"):
        assert Image.open(figure).format == "PNG"
    # one row per set (ID test + OOD sets), a screen wide at most, not one image per row
    width, height = Image.open(results / "figures" / "dense_maps.png").size
    assert width <= 1600 and height <= 1000


@pytest.mark.slow
def test_logits_and_scores_follow_the_contract(pipeline):
    results = pipeline["results"]
    for name in ["synthetic_train", "synthetic_test", *pipeline["ood_names"]]:
        logits = np.load(results / "logits" / f"{name}.npy")
        assert logits.dtype == np.float32 and logits.ndim == 2 and logits.shape[1] == 7
    test_logits = np.load(results / "logits" / "synthetic_test.npy")
    assert test_logits.shape[0] == 24
    fg = test_logits[:, :6]  # background is the LAST column
    np.testing.assert_allclose(np.load(results / "scores" / "MSP" / "synthetic_test.npy"), msp(fg), rtol=1e-5)
    np.testing.assert_allclose(np.load(results / "scores" / "Energy" / "synthetic_test.npy"), energy(fg), rtol=1e-5,
                               atol=1e-5)
    selection = json.loads((results / "fusion_selection.json").read_text())
    # Background: the direction chosen on validation data; Background[-z_bg]: the fixed diagnostic
    np.testing.assert_allclose(np.load(results / "scores" / "Background" / "synthetic_test.npy"),
                               background_score(test_logits, selection["Background"]["sign"]), rtol=1e-6)
    np.testing.assert_allclose(np.load(results / "scores" / "Background[-z_bg]" / "synthetic_test.npy"),
                               -test_logits[:, 6], rtol=1e-6)
    choice = selection["DFB-Energy[logit]"]
    expected = FUSIONS["logit"](energy(fg), test_logits, choice["temperature"], choice["sign"])
    np.testing.assert_allclose(np.load(results / "scores" / "DFB-Energy[logit]" / "synthetic_test.npy"), expected,
                               rtol=1e-5, atol=1e-5)
    for ood in pipeline["ood_names"]:
        assert np.load(results / "scores" / "DFB-Energy" / f"{ood}.npy").dtype == np.float32


@pytest.mark.slow
def test_eval_cache_is_reused_and_keyed_by_checkpoint(pipeline, capsys):
    root, sets = pipeline["root"], pipeline["sets"]
    args = ["--id_train_path", str(sets["id_train"]), "--id_test_path", str(sets["id_test"]),
            "--ood_path", *map(str, sets["ood"].values()), "--device", "cpu", "--workers", "0", "--knn_k", "5"]
    eval_cli.run(eval_cli.parse_args(["--model_path", str(root / "runs" / "dfb" / "checkpoint.pth.tar"),
                                      "--logdir", str(pipeline["results"]), *args]))
    assert "extracted" not in capsys.readouterr().out
    # the classifier is another checkpoint: nothing may come from the dfb network's cache
    eval_cli.run(eval_cli.parse_args(["--model_path", str(pipeline["cls_export"]),
                                      "--logdir", str(pipeline["results"]), *args]))
    out = capsys.readouterr().out
    assert "cached" not in out.split("[eval] synthetic_train")[1].splitlines()[0]
    logits = np.load(pipeline["results"] / "logits" / "synthetic_test.npy")
    assert logits.shape[1] == 6  # a plain classifier: [N, K]


@pytest.mark.slow
def test_stages_refuse_the_wrong_inputs_with_clear_messages(pipeline, tmp_path):
    sets, root = pipeline["sets"], pipeline["root"]
    dfb_checkpoint = root / "runs" / "dfb" / "checkpoint.pth.tar"
    # a classifier checkpoint with another head size
    with pytest.raises(ValueError, match=r"--head_size 10 does not match .*classifier.pth.tar.*6 classes"):
        make_cam.run(make_cam.parse_args([f"--dataset={sets['id_train']}", f"--model_path={pipeline['cls_export']}",
                                          "--head_size=10", "--device=cpu", "--workers=0"]))
    # a dfb checkpoint where a classifier is needed
    with pytest.raises(ValueError, match="is a 'dfb' checkpoint, but this stage needs a 'cls' checkpoint"):
        make_cam.run(make_cam.parse_args([f"--dataset={sets['id_train']}", f"--model_path={dfb_checkpoint}",
                                          "--head_size=7", "--device=cpu", "--workers=0"]))
    # eval told the wrong task
    with pytest.raises(ValueError, match="--task cls but .* is a 'dfb' checkpoint"):
        eval_cli.run(eval_cli.parse_args(["--model_path", str(dfb_checkpoint), "--task", "cls", "--id_train_path",
                                          str(sets["id_train"]), "--id_test_path", str(sets["id_test"]), "--ood_path",
                                          str(sets["ood"]["SynthClutter"]), "--logdir", str(tmp_path), "--device", "cpu"]))
    # missing BiT weights: the message gives the download command
    with pytest.raises(FileNotFoundError, match=r"wget -O .*absent.npz https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz"):
        train.run(train.parse_args(["--task", "cls", "--datadir", str(sets["id_train"]), "--logdir", str(tmp_path),
                                    "--name", "x", "--pretrained", str(tmp_path / "absent.npz"), "--device", "cpu"]))
    # dfb training without masks: the message gives the make_cam command
    with pytest.raises(FileNotFoundError, match="make_cam.py --dataset="):
        train.run(train.parse_args(["--task", "dfb", "--datadir", str(sets["id_test"]), "--logdir", str(tmp_path),
                                    "--name", "y", "--pretrained", "none", "--device", "cpu"]))


@pytest.mark.slow
def test_checkpoints_of_the_original_release_load_with_task_and_head_size(pipeline, tmp_path):
    """A bare DataParallel state dict (what the released code saves) works once told what it is."""
    state = torch.load(pipeline["cls_export"], weights_only=False)["model"]
    release_style = tmp_path / "release.pth.tar"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, release_style)
    sets = pipeline["sets"]
    summary = make_cam.run(make_cam.parse_args([
        f"--dataset={sets['id_test']}", f"--model_path={release_style}", "--head_size=6", "--model=ResNetV2-Tiny",
        "--resolution=32", f"--out={tmp_path / 'masks'}", "--device=cpu", "--workers=0", "--overlays=0"]))
    assert summary["images_computed"] == 24
    args = ["--model_path", str(release_style), "--model", "ResNetV2-Tiny", "--resolution", "32", "--id_train_path",
            str(sets["id_train"]), "--id_test_path", str(sets["id_test"]), "--ood_path", str(sets["ood"]["SynthClutter"]),
            "--logdir", str(tmp_path / "eval"), "--device", "cpu", "--workers", "0", "--knn_k", "5"]
    with pytest.raises(ValueError, match="pass --task cls|dfb and --head_size"):
        eval_cli.run(eval_cli.parse_args(args))
    eval_cli.run(eval_cli.parse_args(args + ["--task", "cls", "--head_size", "6"]))
    assert np.load(tmp_path / "eval" / "logits" / "synthetic_test.npy").shape == (24, 6)


def test_labeled_is_a_real_boolean_flag():
    base = ["--dataset=d", "--model_path=m", "--head_size=3"]
    assert make_cam.parse_args(base).labeled is False
    assert make_cam.parse_args(base + ["--labeled"]).labeled is True
    assert make_cam.parse_args(base + ["--no-labeled"]).labeled is False
    with pytest.raises(SystemExit):  # the release's `--labeled False` meant True; here it is an error
        make_cam.parse_args(base + ["--labeled", "False"])


@pytest.mark.slow
def test_odin_input_perturbation(pipeline, tmp_path):
    sets = pipeline["sets"]
    base = ["--model_path", str(pipeline["cls_export"]), "--id_train_path", str(sets["id_train"]), "--id_test_path",
            str(sets["id_test"]), "--ood_path", str(sets["ood"]["SynthClutter"]), "--device", "cpu", "--workers", "0",
            "--knn_k", "5", "--odin_temperature", "10"]
    eval_cli.run(eval_cli.parse_args(base + ["--logdir", str(tmp_path / "tiny"), "--odin_epsilon", "1e-9"]))
    logits = np.load(tmp_path / "tiny" / "logits" / "synthetic_test.npy")
    unperturbed = np.load(tmp_path / "tiny" / "scores" / "ODIN" / "synthetic_test.npy")
    np.testing.assert_allclose(unperturbed, odin(logits, temperature=10), rtol=1e-4)  # epsilon -> 0
    eval_cli.run(eval_cli.parse_args(base + ["--logdir", str(tmp_path / "big"), "--odin_epsilon", "0.05"]))
    perturbed = np.load(tmp_path / "big" / "scores" / "ODIN" / "synthetic_test.npy")
    assert (perturbed > unperturbed).mean() > 0.9  # the step raises the max softmax, as ODIN intends


@pytest.mark.slow
def test_unknown_model_and_weightless_model_are_explained(pipeline, tmp_path):
    common = ["--task", "cls", "--datadir", str(pipeline["sets"]["id_train"]), "--logdir", str(tmp_path),
              "--name", "z", "--device", "cpu"]
    with pytest.raises(ValueError, match="--model 'BiT-M-R51x1' is unknown; known models: BiT-S-R50x1"):
        train.run(train.parse_args(common + ["--model", "BiT-M-R51x1"]))
    with pytest.raises(ValueError, match="ResNetV2-Tiny has no pretrained weights: pass --pretrained none"):
        train.run(train.parse_args(common + ["--model", "ResNetV2-Tiny"]))


@pytest.mark.slow
def test_worker_loader_path_trains_too(pipeline, tmp_path):
    """Data that does not fit in memory goes through DataLoader workers with per-image transforms."""
    sets = pipeline["sets"]
    metrics = train.run(train.parse_args([
        "--task", "dfb", "--datadir", str(sets["id_train"]), "--logdir", str(tmp_path), "--name", "loader",
        "--steps", "5", "--data_on_device", "never", "--model", "ResNetV2-Tiny", "--resolution", "32",
        "--pretrained", "none", "--device", "cpu", "--workers", "0", "--batch", "8", "--holdout", "0.1"]))
    checkpoint = tmp_path / "loader" / "checkpoint.pth.tar"
    assert metrics["steps"] == 5 and torch.load(checkpoint, weights_only=False)["finished"]
    # pixel accuracy recomputed by hand: the saved network's dense arg-max on the held-out images
    # (--holdout 0.1 of 72 with seed 0) against their masks, 255 ignored
    model = load_network(checkpoint)[0].eval()
    dataset = ImageFolderDataset(sets["id_train"], with_masks=True, num_classes=6)
    correct = valid = 0
    with torch.no_grad():
        for index in holdout_split(len(dataset), 0.1, 0)[1]:
            item = dataset[int(index)]
            prediction = model.dense_logits(item["image"][None].float() / 127.5 - 1, upsample=True).argmax(1)[0]
            counted = item["mask"] != 255
            correct += int(((prediction == item["mask"]) & counted).sum())
            valid += int(counted.sum())
    assert metrics["pixel_accuracy"] == pytest.approx(correct / valid, abs=1e-9)
