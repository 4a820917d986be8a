"""The fitted detector (eval.py --save_detector): utils.ood.detector.Detector on eval.py's arrays, and
score.py with utils.scoring.engine.ImageScorer on image files: an image scores as eval.py scored it, the threshold keeps 95 % of the held-out ID images, the CSV follows
docs/SCORE.md, and bad input ends in one line with exit status 2.

A dfb checkpoint with random weights on the synthetic benchmark, as tests/test_eval_protocol.py."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax

import eval as eval_cli
import score as score_cli
from datasets.batch_augment import test_resize
from datasets.folder import list_samples
from models.resnetv2 import create_model
from utils.base.checkpoint import save_checkpoint
from utils.ood.detector import Detector, keep_threshold, read_detector, state_from_plain, state_to_plain
from utils.ood.scores import IDTrainStats, make_scores
from utils.scoring.engine import CSV_COLUMNS, ImageScorer
from tests.helpers import assert_input_error, random_dfb_checkpoint, run_cli, synthetic_world

REPO = Path(__file__).resolve().parents[1]
SETS = ("synthetic_test", "SynthNewBackgrounds")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("detector")
    sets, classes, checkpoint = synthetic_world(root)
    folders = {"synthetic_test": Path(sets["id_test"]), "SynthNewBackgrounds": Path(sets["ood"]["SynthNewBackgrounds"])}
    logdir = root / "eval"
    eval_cli.main(["--model_path", str(checkpoint), "--id_train_path", str(sets["id_train"]),
                   "--id_test_path", str(folders["synthetic_test"]), "--ood_path", str(folders["SynthNewBackgrounds"]),
                   "--logdir", str(logdir), "--device", "cpu", "--workers", "0", "--knn_k", "5",
                   "--dense_maps", "0", "--save_detector"])
    return dict(root=root, sets=sets, classes=classes, checkpoint=checkpoint, folders=folders, logdir=logdir,
                detector=logdir / "detector.pt")


@pytest.fixture(scope="module")
def scorer(world):
    return ImageScorer.load(world["detector"], device="cpu")


def in_eval_order(rows, folder):
    """rows of score_paths reordered as eval.py lists the split (label, then file name)."""
    by_path = {row["path"]: row for row in rows}
    return [by_path[str(path)] for path, _ in list_samples(folder)]


@pytest.mark.parametrize("name", SETS)
def test_detector_scores_equal_the_scores_eval_wrote(world, scorer, name):
    rows = in_eval_order(scorer.score_paths([world["folders"][name]], batch=5), world["folders"][name])
    scores = world["logdir"] / "scores"
    fusion = scorer.detector.fusion
    assert scorer.detector.method == "ViM" and fusion["name"] == "DFB-ViM" and fusion["mode"] == "logit"
    for column, method in (("score", "DFB-ViM"), ("fg_score", "ViM"), ("bg_score", "Background")):
        np.testing.assert_allclose([row[column] for row in rows], np.load(scores / method / f"{name}.npy"),
                                   rtol=1e-5, atol=1e-5, err_msg=column)
    # class and probability from eval's own logits: softmax over the K foreground logits
    logits = np.load(world["logdir"] / "logits" / f"{name}.npy")[:, :len(world["classes"])]
    probabilities = softmax(logits.astype(np.float64), axis=1)
    assert [row["pred_class"] for row in rows] == [world["classes"][i] for i in probabilities.argmax(1)]
    np.testing.assert_allclose([row["pred_prob"] for row in rows], probabilities.max(1), rtol=1e-5, atol=1e-6)
    assert [row["is_ood"] for row in rows] == [row["score"] < scorer.threshold for row in rows]



@pytest.mark.parametrize("name", SETS)
def test_detector_on_evals_own_arrays_gives_evals_scores(world, name):
    """Arrays in, scores out: the logits and features eval.py cached for a set give back its saved scores."""
    cached = np.load(next((world["logdir"] / "cache").glob(f"{name}-*.npz")))
    detector = Detector.load(world["detector"])
    out = detector.score(cached["logits"], cached["features"])
    scores = world["logdir"] / "scores"
    for column, method in (("score", "DFB-ViM"), ("fg_score", "ViM"), ("bg_score", "Background")):
        np.testing.assert_allclose(out[column], np.load(scores / method / f"{name}.npy"), rtol=1e-6, atol=1e-6,
                                   err_msg=column)
    np.testing.assert_array_equal(out["is_ood"], out["score"] < detector.threshold)
    with pytest.raises(ValueError, match=f"logits \\[B, {len(world['classes']) + 1}\\]"):
        detector.score(cached["logits"][:, :-1], cached["features"])

def test_background_fraction_is_that_of_the_dense_argmax(world, scorer):
    path = list_samples(world["folders"]["SynthNewBackgrounds"])[0][0]
    row = scorer.score_paths([path])[0]
    model = create_model("ResNetV2-Tiny", head_size=len(world["classes"]) + 1)
    model.load_state_dict(torch.load(world["checkpoint"], weights_only=False)["model"])
    image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None]
    with torch.no_grad():
        dense = model.eval().dense_logits(test_resize(image, 32), upsample=True)
    expected = (dense.argmax(1) == len(world["classes"])).float().mean().item()
    assert row["bg_fraction"] == pytest.approx(expected, abs=1e-6)


def test_threshold_keeps_95_percent_of_the_held_out_id_images_and_no_more_than_needed(world, scorer):
    selection = json.loads((world["logdir"] / "fusion_selection.json").read_text())["validation_images"]
    spec = read_detector(world["detector"])
    assert spec["threshold"]["images"]["digest"] == selection["digest"]
    held_out = [Path(world["sets"]["id_train"]) / path for path in selection["images"]]
    scores = np.array([row["score"] for row in scorer.score_paths(held_out, batch=16)])
    # The threshold is one of these images' scores as eval.py computed them (other batch size, so
    # other convolution blocking): scored again they may differ in the last bits, e.g. with one thread.
    rounding = 1e-5 * max(1.0, abs(scorer.threshold))
    kept = scores >= scorer.threshold - rounding
    assert kept.mean() >= 0.95
    # the tightest such threshold: one score more below it would keep fewer than 95 %
    assert (scores > scorer.threshold + rounding).mean() < 0.95 or (scores < scorer.threshold - rounding).sum() == 0
    assert spec["threshold"]["kept_fraction"] == pytest.approx(kept.mean())


def test_keep_threshold_rule():
    scores = np.arange(1, 21, dtype=np.float32)          # 20 images: one may fall below
    assert keep_threshold(scores) == 2.0
    assert keep_threshold(scores[:19]) == 1.0            # 19 images: 0.95 of one image, none may fall below
    assert keep_threshold(np.arange(100, dtype=np.float32)[::-1]) == 5.0


@pytest.mark.parametrize("method", ["ViM", "KNN", "ReAct", "Mahalanobis", "Energy"])
def test_fitted_state_survives_the_file(tmp_path, method):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 16)).astype(np.float32)
    weight, bias = rng.normal(size=(3, 16)), rng.normal(size=3)
    stats = IDTrainStats(features=features, logits=features @ weight.T + bias, labels=np.arange(60) % 3,
                         head_weight=weight, head_bias=bias)
    score = make_scores(KNN=dict(k=3))[method]
    fitted = score.fit(stats)
    torch.save({"fitted": state_to_plain(fitted)}, tmp_path / "state.pt")
    loaded = state_from_plain(torch.load(tmp_path / "state.pt", weights_only=True)["fitted"], "cpu")
    test = rng.normal(size=(7, 16))
    np.testing.assert_array_equal(score.compute(test @ weight.T + bias, test, loaded),
                                  score.compute(test @ weight.T + bias, test, fitted))


def score_md_columns():
    """The column names of docs/SCORE.md's table, in order."""
    text = (REPO / "docs" / "SCORE.md").read_text()
    return re.findall(r"^\| `(\w+)` \|", text, flags=re.MULTILINE)


def test_cli_csv_follows_score_md_and_matches_the_api(world, scorer, tmp_path, capsys):
    folder = world["folders"]["SynthNewBackgrounds"]
    out = tmp_path / "scores.csv"
    status, stdout, err = run_cli(score_cli, ["--detector", str(world["detector"]), "--images", str(folder), "--out", str(out),
                                   "--device", "cpu", "--workers", "0", "--batch", "7", "--maps",
                                   str(tmp_path / "maps")], capsys)
    assert status == 0, err
    assert score_md_columns() == CSV_COLUMNS
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        written = list(reader)
    rows = scorer.score_paths([folder], batch=7)  # the CLI's batches: the very same float operations
    assert len(written) == len(rows) == 16
    for line, row in zip(written, rows):
        assert line["path"] == row["path"] and line["pred_class"] == row["pred_class"]
        assert line["is_ood"] == str(int(row["is_ood"]))
        for column in ("score", "fg_score", "bg_score", "pred_prob", "bg_fraction"):
            assert np.float32(line[column]) == np.float32(row[column]), column
    assert f"16 images, {sum(r['is_ood'] for r in rows)} OOD" in stdout
    maps = sorted((tmp_path / "maps").iterdir())
    assert [m.name for m in maps] == [f"{i:02d}_{Path(r['path']).stem}.png" for i, r in enumerate(rows)]
    with Image.open(maps[0]) as image:
        assert image.size == (4 * (32 + 2 + 32), 4 * 32)  # image | gap | map, x4 to reach 128 px


def test_score_tensors_gives_the_numbers_of_score_paths(world, scorer):
    paths = [path for path, _ in list_samples(world["folders"]["synthetic_test"])[:5]]
    rows = scorer.score_paths(paths)
    batch = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths])
    out = scorer.score_tensors(batch)
    for column in ("score", "fg_score", "bg_score", "pred_prob", "bg_fraction"):
        np.testing.assert_allclose(out[column], [row[column] for row in rows], rtol=1e-5, atol=1e-6)
    assert list(out["pred_class"]) == [row["pred_class"] for row in rows]
    as_float = scorer.score_tensors(batch.float() / 255)  # floats in [0, 1]: the same images
    np.testing.assert_allclose(as_float["score"], out["score"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="floats in \\[0, 1\\]"):
        scorer.score_tensors(batch.float())


def test_detector_refuses_another_checkpoint(world, tmp_path, capsys):
    other = random_dfb_checkpoint(tmp_path / "other.pth.tar", world["classes"], seed=1)
    assert_input_error(score_cli, ["--detector", str(world["detector"]), "--model_path", str(other), "--images",
                        str(world["folders"]["synthetic_test"]), "--out", str(tmp_path / "s.csv")], capsys,
                       str(world["detector"]), str(other), "sha256")
    assert not (tmp_path / "s.csv").exists()
    # the same through the real interpreter: exit status 2, one line
    result = subprocess.run([sys.executable, "score.py", "--detector", str(world["detector"]), "--model_path", str(other),
                             "--images", str(world["folders"]["synthetic_test"]), "--out", str(tmp_path / "s.csv")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error (score.py): detector "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_images_give_one_line_errors_or_are_skipped(world, tmp_path, capsys):
    base = ["--detector", str(world["detector"]), "--device", "cpu", "--workers", "0", "--out",
            str(tmp_path / "s.csv")]
    good = list_samples(world["folders"]["synthetic_test"])[0][0]
    (tmp_path / "empty").mkdir()
    assert_input_error(score_cli, base + ["--images", str(tmp_path / "empty")], capsys, "empty", "no image files")
    assert_input_error(score_cli, base + ["--images", str(tmp_path / "missing")], capsys, "missing", "does not exist")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert_input_error(score_cli, base + ["--images", str(notes)], capsys, "notes.txt", "is not an image file")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(Path(good).read_bytes()[:60])  # truncated
    assert_input_error(score_cli, base + ["--images", str(good), str(corrupt)], capsys, "corrupt.png", "cannot decode",
                       "--skip_corrupt")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tiny)
    assert_input_error(score_cli, base + ["--images", str(tiny)], capsys, "tiny.png", "1x1 pixels", "at least 8")
    status, stdout, err = run_cli(score_cli, base + ["--images", str(good), str(corrupt), str(tiny), "--skip_corrupt"], capsys)
    assert status == 0, err
    assert "left out 2 images" in stdout and "corrupt.png" in stdout and "tiny.png" in stdout
    with open(tmp_path / "s.csv", newline="") as f:
        assert [row["path"] for row in csv.DictReader(f)] == [str(good)]
    not_a_detector = tmp_path / "detector.pt"
    not_a_detector.write_text("hello")
    assert_input_error(score_cli, ["--detector", str(not_a_detector), "--images", str(good), "--out", str(tmp_path / "t.csv")],
                       capsys, "not a readable detector file")


def test_save_detector_needs_a_dfb_checkpoint(world, tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("ResNetV2-Tiny", head_size=len(world["classes"]))
    cls = tmp_path / "cls.pth.tar"
    save_checkpoint(cls, model_state=model.state_dict(), optim_state={}, step=0, args={}, task="cls",
                    model_name="ResNetV2-Tiny", classes=world["classes"], resolution=32, finished=True)
    sets = world["sets"]
    assert_input_error(eval_cli, ["--model_path", str(cls), "--id_train_path", str(sets["id_train"]), "--id_test_path",
                        str(sets["id_test"]), "--ood_path", str(sets["ood"]["SynthClutter"]), "--logdir",
                        str(tmp_path / "e"), "--device", "cpu", "--workers", "0", "--save_detector", "KNN"], capsys,
                       "--save_detector needs a dfb checkpoint", str(cls))
