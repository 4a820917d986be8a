"""eval.py --tta flip: every set's logits and pooled features are the mean over each image and its
horizontal mirror (the ID training images that fit the scores, the ID test set, every OOD set, the
fusions' validation images), the feature cache keeps the two modes apart, the results say which
mode was used, and a detector fitted with flip scores new images with flip (score.py).

Checked against an independent computation: the same checkpoint run by hand on x and x.flip(-1).
Random-weight cls and dfb checkpoints on a few random-noise images of their own (32 px)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax

import eval as eval_cli
from datasets.sources import eval_batches, open_split, restrict
from models.loading import load_network
from models.resnetv2 import create_model
from utils.base.checkpoint import save_checkpoint
from utils.evaluate.engine import with_tta
from utils.evaluate.main import cache_key
from utils.evaluate.sets import PatchShuffled
from utils.ood.fusion import background_score
from utils.ood.scores import odin, odin_perturb
from utils.scoring.engine import ImageScorer
from tests.helpers import random_dfb_checkpoint

CLASSES = ["a", "b"]
ODIN_EPSILON, ODIN_TEMPERATURE = 0.002, 2.0


def write_images(folder, count, rng):
    folder.mkdir(parents=True)
    for i in range(count):  # noise: no image is its own mirror
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def random_cls_checkpoint(path):
    torch.manual_seed(1)
    model = create_model("ResNetV2-Tiny", head_size=len(CLASSES))
    torch.nn.init.normal_(model.head.conv.weight, std=0.5)  # a zero head would make every score constant
    save_checkpoint(path, model_state=model.state_dict(), optim_state={}, step=0, args={}, task="cls",
                    model_name="ResNetV2-Tiny", classes=CLASSES, resolution=32, finished=True)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        write_images(root / "tiny" / "train" / cls, 6, rng)
        write_images(root / "tiny" / "test" / cls, 3, rng)
    write_images(root / "Noise" / "test" / "all", 4, rng)
    return dict(root=root, train=root / "tiny" / "train", test=root / "tiny" / "test", ood=root / "Noise" / "test",
                cls=random_cls_checkpoint(root / "cls.pth.tar"),
                dfb=random_dfb_checkpoint(root / "dfb.pth.tar", CLASSES, seed=0))


def run_eval(tiny, checkpoint, logdir, *extra):
    return eval_cli.run(eval_cli.parse_args([
        "--model_path", str(checkpoint), "--id_train_path", str(tiny["train"]), "--id_test_path", str(tiny["test"]),
        "--ood_path", str(tiny["ood"]), "--logdir", str(logdir), "--device", "cpu", "--workers", "0",
        "--knn_k", "2", "--dense_maps", "0", "--layout_images", "0", *extra]))


def by_hand(checkpoint, dataset, flip=True):
    """float64 logits [N, C] of the checkpoint on the images eval.py feeds: the mean of x and x.flip(-1)."""
    model = load_network(checkpoint)[0].eval()
    outputs = []
    with torch.no_grad():
        for images, _, _ in eval_batches(dataset, 32, torch.device("cpu"), 64, workers=0):
            logits = model(images).double()
            outputs.append((logits + model(images.flip(-1)).double()) / 2 if flip else logits)
    return torch.cat(outputs).numpy()


def odin_by_hand(checkpoint, dataset, num_classes):
    """ODIN with input perturbation on the flip-averaged foreground logits, written out."""
    model = load_network(checkpoint)[0].eval()

    def averaged(x):
        return ((model(x) + model(x.flip(-1))) / 2)[:, :num_classes]
    images = next(eval_batches(dataset, 32, torch.device("cpu"), 64, workers=0))[0]
    perturbed = odin_perturb(averaged, images, ODIN_TEMPERATURE, 2 * ODIN_EPSILON)
    with torch.no_grad():
        return odin(averaged(perturbed).numpy(), ODIN_TEMPERATURE)


def test_with_tta_names_the_modes():
    model = create_model("ResNetV2-Tiny", head_size=2)
    assert with_tta(model, "none") is model and with_tta(model, "flip").model is model
    with pytest.raises(ValueError, match="test-time augmentation 'rotate': expected one of none, flip"):
        with_tta(model, "rotate")


@pytest.fixture(scope="module")
def cls_flip(tiny):
    logdir = tiny["root"] / "cls_flip"
    run_eval(tiny, tiny["cls"], logdir, "--tta", "flip", "--odin_epsilon", str(ODIN_EPSILON))
    return logdir


@pytest.fixture(scope="module")
def dfb_flip(tiny):
    logdir = tiny["root"] / "dfb_flip"
    return logdir, run_eval(tiny, tiny["dfb"], logdir, "--tta", "flip", "--save_detector")


# the tests below run eval.py (pytest -m "not slow" leaves them out)
@pytest.mark.slow
def test_cls_scores_are_those_of_the_flip_averaged_logits(tiny, cls_flip):
    test, ood = open_split(tiny["test"], 32, classes=CLASSES), open_split(tiny["ood"], 32)
    for name, dataset in (("tiny_test", test), ("Noise", ood)):
        logits = by_hand(tiny["cls"], dataset)
        np.testing.assert_allclose(np.load(cls_flip / "logits" / f"{name}.npy"), logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.load(cls_flip / "scores" / "MSP" / f"{name}.npy"),
                                   softmax(logits, axis=1).max(1), rtol=1e-5, atol=1e-6)
        # ODIN's input perturbation follows the averaged logits
        np.testing.assert_allclose(np.load(cls_flip / "scores" / "ODIN" / f"{name}.npy"),
                                   odin_by_hand(tiny["cls"], dataset, len(CLASSES)), rtol=1e-4, atol=1e-5)
    # the fitted scores' training features are flip-averaged too: the logits eval saved of the training split
    train = open_split(tiny["train"], 32, classes=CLASSES)
    np.testing.assert_allclose(np.load(cls_flip / "logits" / "tiny_train.npy"), by_hand(tiny["cls"], train),
                               rtol=1e-5, atol=1e-5)
    accuracy = json.loads((cls_flip / "accuracy.json").read_text())
    labels = np.repeat(np.arange(len(CLASSES)), 3)
    assert accuracy["tta"] == "flip"
    assert accuracy["top1"] == pytest.approx(np.mean(by_hand(tiny["cls"], test).argmax(1) == labels))
    assert "Test-time augmentation: flip" in (cls_flip / "results.md").read_text()


@pytest.mark.slow
def test_dfb_scores_and_fusion_validation_images_are_flip_averaged(tiny, dfb_flip):
    logdir, result = dfb_flip
    selection = result["selection"]
    k = len(CLASSES)
    for name, dataset in (("tiny_test", open_split(tiny["test"], 32, classes=CLASSES)),
                          ("Noise", open_split(tiny["ood"], 32))):
        logits = by_hand(tiny["dfb"], dataset)  # all K+1, the background logit included
        np.testing.assert_allclose(np.load(logdir / "logits" / f"{name}.npy"), logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.load(logdir / "scores" / "MSP" / f"{name}.npy"),
                                   softmax(logits[:, :k], axis=1).max(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.load(logdir / "scores" / "Background" / f"{name}.npy"),
                                   background_score(logits, selection["Background"]["sign"]), rtol=1e-5, atol=1e-5)
    # the held-out ID images and their patch-shuffled copies that chose the fusions (the cache holds them)
    train = open_split(tiny["train"], 32, classes=CLASSES)
    relative = [Path(path).relative_to(tiny["train"]).as_posix() for path, _ in train.samples]
    heldout = restrict(train, [relative.index(path) for path in selection["validation_images"]["images"]])
    for name, dataset in (("fusion_id_heldout", heldout), ("fusion_val_ood", PatchShuffled(heldout, 4, 0))):
        with np.load(next((logdir / "cache").glob(f"{name}-*.npz"))) as cached:
            np.testing.assert_allclose(cached["logits"], by_hand(tiny["dfb"], dataset), rtol=1e-5, atol=1e-5)
    assert selection["tta"] == "flip" and json.loads((logdir / "accuracy.json").read_text())["tta"] == "flip"
    assert "and to the fusions' validation images" in (logdir / "results.md").read_text()


@pytest.mark.slow
def test_the_feature_cache_keeps_tta_modes_apart(tiny, cls_flip, tmp_path):
    logdir = tmp_path / "eval"
    shutil.copytree(cls_flip, logdir)  # the flip run's cache, then a run without TTA in the same folder
    run_eval(tiny, tiny["cls"], logdir, "--odin_epsilon", str(ODIN_EPSILON))
    test = open_split(tiny["test"], 32, classes=CLASSES)
    np.testing.assert_allclose(np.load(logdir / "logits" / "tiny_test.npy"), by_hand(tiny["cls"], test, flip=False),
                               rtol=1e-5, atol=1e-5)
    assert json.loads((logdir / "accuracy.json").read_text())["tta"] == "none"
    # one extraction per set and mode
    for name in ("tiny_train", "tiny_test", "Noise"):
        assert len(list((logdir / "cache").glob(f"{name}-*.npz"))) == 2, name
    key = dict(checkpoint_key="c", dataset=test, digests=["d"] * len(test), resolution=32, amp="none", odin_setting=None)
    assert cache_key(**key, tta="flip") != cache_key(**key, tta="none")


@pytest.mark.slow
def test_a_detector_fitted_with_flip_scores_new_images_with_flip(tiny, dfb_flip):
    logdir, _ = dfb_flip
    scorer = ImageScorer.load(logdir / "detector.pt", device="cpu")
    assert scorer.detector.spec["tta"] == "flip" and "test-time augmentation flip" in scorer.describe()
    rows = scorer.score_paths([tiny["test"]], batch=4)  # sorted by path: a/0..2, b/0..2, eval.py's order
    for column, method in (("score", "DFB-ViM"), ("fg_score", "ViM"), ("bg_score", "Background")):
        np.testing.assert_allclose([row[column] for row in rows], np.load(logdir / "scores" / method / "tiny_test.npy"),
                                   rtol=1e-5, atol=1e-5, err_msg=column)
    logits = by_hand(tiny["dfb"], open_split(tiny["test"], 32, classes=CLASSES))[:, :len(CLASSES)]
    np.testing.assert_allclose([row["pred_prob"] for row in rows], softmax(logits, axis=1).max(1), rtol=1e-5, atol=1e-6)
