"""The mask contract (datasets/masks.py): paths, provenance, the class limit, and the one rule that
scores masks against masks, used alike by train.py (utils/evaluate/dense.py) and make_cam.py --true_masks."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import make_cam
from datasets.folder import ImageFolderDataset
from datasets.masks import (IGNORE_INDEX, MAX_CLASSES, invalid_values, mask_path, mask_root_for, overlap_counts,
                            overlap_scores, read_provenance, write_provenance, zero_overlap_counts)
from utils.cam.main import compare_with_true_masks
from utils.evaluate.dense import evaluate_masks


def _scores(pred, true, num_classes):
    return overlap_scores(overlap_counts(torch.from_numpy(pred), torch.from_numpy(true), num_classes), num_classes)


def _numpy_scores(pred, true, num_classes):
    """The rule written out independently: pixels valid in both masks; a ratio over no pixel is NaN."""
    valid = (pred != IGNORE_INDEX) & (true != IGNORE_INDEX)
    pred, true = pred[valid], true[valid]

    def iou(a, b):
        union = np.count_nonzero(a | b)
        return np.count_nonzero(a & b) / union if union else math.nan

    return {"pixel_accuracy": np.count_nonzero(pred == true) / pred.size if pred.size else math.nan,
            "foreground_iou": iou(pred < num_classes, true < num_classes),
            "background_iou": iou(pred == num_classes, true == num_classes),
            "per_class": {k: iou(pred == k, true == k) for k in range(num_classes)
                          if np.any(pred == k) or np.any(true == k)}}


def _random_masks(rng, shape, num_classes):
    masks = rng.integers(0, num_classes + 1, shape).astype(np.uint8)
    masks[rng.random(shape) < 0.15] = IGNORE_INDEX
    return masks


# ----------------------------------------------------------------------------- constants, paths, provenance

def test_class_limit_leaves_room_for_background_and_ignore():
    assert IGNORE_INDEX == 255 and MAX_CLASSES == 254  # values 0..253 classes, 254 background, 255 ignore
    argv = ["--dataset", "d", "--model_path", "m", "--head_size"]
    assert make_cam.parse_args(argv + [str(MAX_CLASSES)]).head_size == 254
    with pytest.raises(SystemExit):
        make_cam.parse_args(argv + [str(MAX_CLASSES + 1)])


def test_mask_paths_follow_the_contract():
    assert mask_root_for("dataset/cifar10/train") == Path("dataset/cifar10/train_mask")
    assert mask_root_for("dataset/cifar10/train/") == Path("dataset/cifar10/train_mask")
    assert (mask_path("dataset/cifar10/train_mask", "dataset/cifar10/train/cat/0001.jpg")
            == Path("dataset/cifar10/train_mask/cat/0001.png"))


def test_provenance_round_trip(tmp_path):
    assert read_provenance(tmp_path) is None
    provenance = {"classifier_sha256": "ab", "labeled": False, "scales": [1.0, 0.5], "resolution": 32}
    write_provenance(tmp_path, provenance)
    assert read_provenance(tmp_path) == provenance
    assert [p.name for p in tmp_path.iterdir()] == ["provenance.json"]


def test_invalid_values_for_numpy_and_torch():
    values = np.array([0, 2, 3, 200, 254, 255], np.uint8)  # K = 2: 0..1 classes, 2 background
    expected = [False, False, True, True, True, False]
    assert invalid_values(values, 2).tolist() == expected
    assert invalid_values(torch.from_numpy(values), 2).tolist() == expected
    assert invalid_values(np.array([-1, 0]), 2).tolist() == [True, False]


# ----------------------------------------------------------------------------- the scoring rule

def test_scores_hand_worked():
    # K = 2 (classes 0, 1; background 2). The pixel at (1, 2) is ignored (255 in pred), (0, 3) too (255 in true).
    pred = np.array([[[0, 0, 2, 1], [1, 2, 255, 0]]], np.uint8)
    true = np.array([[[0, 2, 2, 255], [1, 1, 2, 2]]], np.uint8)
    # valid: (0,0) (0,1) (0,2) (1,0) (1,1) (1,3); the same value at (0,0) (0,2) (1,0) -> 3 / 6
    # foreground: pred {(0,0),(0,1),(1,0),(1,3)}, true {(0,0),(1,0),(1,1)} -> 2 / 5
    # background: pred {(0,2),(1,1)}, true {(0,1),(0,2),(1,3)}             -> 1 / 4
    # class 0: pred {(0,0),(0,1),(1,3)}, true {(0,0)} -> 1/3; class 1: pred {(1,0)}, true {(1,0),(1,1)} -> 1/2
    counts = overlap_counts(torch.from_numpy(pred), torch.from_numpy(true), 2)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [6, 2, 5,  1, 1, 1,  3, 2, 4]
    result = overlap_scores(counts, 2)
    assert result["pixel_accuracy"] == 0.5
    assert result["foreground_iou"] == pytest.approx(2 / 5)
    assert result["background_iou"] == pytest.approx(1 / 4)
    assert result["per_class"] == {0: pytest.approx(1 / 3), 1: pytest.approx(1 / 2)}


def test_scores_distinguish_foreground_from_background():
    # everything predicted as class 0, one true foreground pixel out of four (K = 1, background 1)
    pred = np.zeros((1, 2, 2), np.uint8)
    true = np.array([[[0, 1], [1, 1]]], np.uint8)
    result = _scores(pred, true, 1)
    assert result["foreground_iou"] == pytest.approx(0.25)
    assert result["background_iou"] == 0.0


def test_foreground_iou_is_class_agnostic():
    pred = np.array([[[1, 2]]], np.uint8)  # class 1 where the truth is class 0
    true = np.array([[[0, 2]]], np.uint8)
    result = _scores(pred, true, 2)
    assert result["foreground_iou"] == 1.0 and result["background_iou"] == 1.0
    assert result["per_class"] == {0: 0.0, 1: 0.0}
    assert result["pixel_accuracy"] == 0.5


def test_nothing_to_score_is_nan():
    background = np.full((1, 2, 2), 2, np.uint8)  # K = 2, no foreground in either mask
    result = _scores(background, background, 2)
    assert math.isnan(result["foreground_iou"]) and result["background_iou"] == 1.0
    assert result["per_class"] == {} and result["pixel_accuracy"] == 1.0
    ignored = np.full((1, 2, 2), IGNORE_INDEX, np.uint8)  # no valid pixel at all
    result = _scores(background, ignored, 2)
    assert all(math.isnan(result[key]) for key in ("pixel_accuracy", "foreground_iou", "background_iou"))
    np.testing.assert_equal(overlap_scores(zero_overlap_counts(2), 2), result)


def test_scores_equal_an_independent_numpy_computation():
    rng = np.random.default_rng(0)
    for num_classes in (1, 3, 10):
        pred = _random_masks(rng, (5, 9, 7), num_classes)
        true = _random_masks(rng, (5, 9, 7), num_classes)
        np.testing.assert_equal(_scores(pred, true, num_classes), _numpy_scores(pred, true, num_classes))


def test_counts_of_batches_add_up_to_the_counts_of_the_whole():
    rng = np.random.default_rng(1)
    pred, true = _random_masks(rng, (6, 8, 8), 3), _random_masks(rng, (6, 8, 8), 3)
    whole = overlap_counts(torch.from_numpy(pred), torch.from_numpy(true), 3)
    parts = zero_overlap_counts(3)
    for batch in (slice(0, 1), slice(1, 4), slice(4, 6)):
        parts += overlap_counts(torch.from_numpy(pred[batch]), torch.from_numpy(true[batch]), 3)
    assert torch.equal(parts, whole)


def test_predictions_as_int64_count_like_uint8():
    rng = np.random.default_rng(2)
    pred, true = rng.integers(0, 3, (2, 5, 5)), _random_masks(rng, (2, 5, 5), 2)  # argmax gives int64, never 255
    assert torch.equal(overlap_counts(torch.from_numpy(pred), torch.from_numpy(true), 2),
                       overlap_counts(torch.from_numpy(pred.astype(np.uint8)), torch.from_numpy(true), 2))


def test_shapes_must_match():
    with pytest.raises(ValueError, match="same shape"):
        overlap_counts(torch.zeros(1, 2, 2, dtype=torch.uint8), torch.zeros(1, 2, 3, dtype=torch.uint8), 2)


# ----------------------------------------------------------------------------- the two callers agree

class _PredictsItsRedChannel(torch.nn.Module):
    """A stand-in dense network: the predicted mask value of a pixel is its red channel (0..K)."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def dense_logits(self, images, upsample=True):
        values = ((images[:, 0] + 1) * 127.5).round().long()  # undo x = pixels / 127.5 - 1
        return F.one_hot(values, self.num_classes + 1).permute(0, 3, 1, 2).float()


def _split_with_masks(root, pred, true):
    """ImageFolder of len(pred) images (red channel = the predicted mask) in two classes; the true masks
    in <split>_mask, the predicted ones in <split>_pred as make_cam.py would write them."""
    split = root / "train"
    for i, (p, t) in enumerate(zip(pred, true)):
        image = split / ("a" if i % 2 else "b") / f"{i:02d}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([p, np.zeros_like(p), np.zeros_like(p)], axis=-1)).save(image)
        for mask_root, values in ((mask_root_for(split), t), (root / "pred", p)):
            mask_path(mask_root, image).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(values).save(mask_path(mask_root, image))
    return split


@pytest.mark.parametrize("empty_foreground", [False, True])
def test_dense_eval_and_make_cam_report_the_same_numbers(tmp_path, empty_foreground):
    num_classes, rng = 2, np.random.default_rng(3)
    pred = rng.integers(0, num_classes + 1, (7, 8, 8)).astype(np.uint8)
    true = _random_masks(rng, (7, 8, 8), num_classes)
    if empty_foreground:  # nothing is foreground in either: foreground IoU is NaN on both paths
        pred[:] = num_classes
        true[true != IGNORE_INDEX] = num_classes
    split = _split_with_masks(tmp_path, pred, true)
    dataset = ImageFolderDataset(split, with_masks=True, num_classes=num_classes)
    order = [int(Path(path).stem) for path, _ in dataset.samples]  # the dataset lists images by class

    dense = evaluate_masks(_PredictsItsRedChannel(num_classes), dataset, resolution=8, device=torch.device("cpu"),
                           batch_size=3, amp="none", num_classes=num_classes)
    pseudo_paths = [mask_path(tmp_path / "pred", path) for path, _ in dataset.samples]
    make_cam_numbers = compare_with_true_masks(pseudo_paths, dataset, mask_root_for(split), num_classes)
    expected = _numpy_scores(pred[order], true[order], num_classes)

    assert set(dense) == {"pixel_accuracy", "foreground_iou", "background_iou"}
    np.testing.assert_equal(dense, {key: expected[key] for key in dense})
    np.testing.assert_equal({key: make_cam_numbers[key] for key in ("foreground_iou", "background_iou")},
                            {key: dense[key] for key in ("foreground_iou", "background_iou")})
    assert make_cam_numbers["images"] == 7
    assert math.isnan(dense["foreground_iou"]) == empty_foreground


def test_make_cam_refuses_a_true_mask_outside_the_contract(tmp_path):
    pred = np.zeros((2, 4, 4), np.uint8)
    true = np.full((2, 4, 4), 2, np.uint8)
    true[1, 0, 0] = 7  # K = 2: neither a class, the background nor ignore
    split = _split_with_masks(tmp_path, pred, true)
    dataset = ImageFolderDataset(split)
    with pytest.raises(ValueError, match=r"train_mask/a/01\.png holds value 7"):
        compare_with_true_masks([mask_path(tmp_path / "pred", path) for path, _ in dataset.samples], dataset,
                                mask_root_for(split), 2)
