"""blob_scores: how much a set's predicted foregrounds are one shared blob (eval.py's dense_layout.json)."""
import numpy as np
import pytest
import torch

from utils.evaluate.dense import blob_scores


def numpy_blob_iou(foreground):
    typical = foreground.mean(axis=0) >= 0.5
    values = []
    for mask in foreground:
        union = np.logical_or(mask, typical).sum()
        if union:
            values.append(np.logical_and(mask, typical).sum() / union)
    return float(np.mean(values)) if values else float("nan")


def test_blob_scores_match_a_direct_computation():
    rng = np.random.default_rng(0)
    foreground = rng.random((40, 6, 6)) < 0.3
    foreground[:, 2:4, 2:4] |= rng.random((40, 2, 2)) < 0.9  # a centred blob most images share
    scores = blob_scores(torch.from_numpy(foreground))
    assert scores["images"] == 40
    assert scores["blob_iou"] == pytest.approx(numpy_blob_iou(foreground))
    assert scores["foreground_fraction"] == pytest.approx(foreground.mean())
    assert scores["typical_foreground_fraction"] == pytest.approx((foreground.mean(0) >= 0.5).mean())


def test_one_blob_everywhere_scores_one_and_moving_objects_score_low():
    same = torch.zeros(10, 8, 8, dtype=torch.bool)
    same[:, 2:6, 2:6] = True
    assert blob_scores(same)["blob_iou"] == 1.0
    moving = torch.zeros(4, 8, 8, dtype=torch.bool)
    for i, (top, left) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        moving[i, top:top + 4, left:left + 4] = True
    assert blob_scores(moving)["typical_foreground_fraction"] == 0.0 and blob_scores(moving)["blob_iou"] == 0.0
    assert np.isnan(blob_scores(torch.zeros(3, 4, 4, dtype=torch.bool))["blob_iou"])  # nothing to score
    with pytest.raises(ValueError, match="bool"):
        blob_scores(torch.zeros(3, 4, 4))
