import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from utils.metrics import aupr_in, aupr_out, auroc, fpr_at_95_tpr, fpr_at_tpr, ood_metrics, roc_curve


def sklearn_reference(id_scores, ood_scores):
    """The three curve metrics from scikit-learn, ID labelled 1."""
    labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    scores = np.r_[id_scores, ood_scores]
    return {
        "auroc": roc_auc_score(labels, scores),
        "aupr_in": average_precision_score(labels, scores),
        "aupr_out": average_precision_score(1 - labels, -scores),
    }


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_curve_metrics_match_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(5, 400, size=2)
    id_scores = rng.normal(1.0, 1.0, n_id)
    ood_scores = rng.normal(0.0, 1.5, n_ood)
    if ties:  # a handful of distinct values: most scores tie, within and across classes
        id_scores, ood_scores = np.round(id_scores), np.round(ood_scores)
    expected = sklearn_reference(id_scores, ood_scores)
    got = ood_metrics(id_scores, ood_scores)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_all_scores_tied_give_chance_auroc_and_base_rate_precision():
    id_scores, ood_scores = np.zeros(3), np.zeros(7)
    assert auroc(id_scores, ood_scores) == 0.5
    assert aupr_in(id_scores, ood_scores) == pytest.approx(0.3)   # 3 ID out of 10
    assert aupr_out(id_scores, ood_scores) == pytest.approx(0.7)
    assert fpr_at_95_tpr(id_scores, ood_scores) == 1.0


def test_fpr95_hand_worked_with_ties():
    # 20 ID scores: 0..18 and a second 5. Sorted descending: 18, 17, ..., 6, 5, 5, 4, ..., 0.
    # ceil(0.95 * 20) = 19 -> threshold = 19th largest = 1 (18..6 are 13 values, then 5, 5,
    # 4, 3, 2, 1: the 19th). OOD scores >= 1: {1, 1, 5, 7} out of {0, 0.5, 1, 1, 5, 7, -3, 0.99}
    # -> 4 / 8.
    id_scores = np.r_[np.arange(19.0), 5.0]
    ood_scores = np.array([0, 0.5, 1, 1, 5, 7, -3, 0.99])
    assert fpr_at_95_tpr(id_scores, ood_scores) == 0.5


def test_fpr95_threshold_tie_counts_ood_at_threshold():
    # 10 ID scores: ceil(9.5) = 10 -> threshold = smallest ID score = 2.
    # OOD {2, 2, 1.999}: the two equal to the threshold count as false positives -> 2/3.
    id_scores = np.array([9, 8, 7, 6, 5, 4, 3, 3, 2, 2.0])
    ood_scores = np.array([2, 2, 1.999])
    assert fpr_at_95_tpr(id_scores, ood_scores) == pytest.approx(2 / 3)
    # 100 ID scores 1..100: ceil(95) = 95 -> threshold = 95th largest = 6; OOD 6 counts, 5.9 not
    assert fpr_at_95_tpr(np.arange(1.0, 101.0), np.array([6.0, 5.9, 100.0, 0.0])) == 0.5


def test_fpr_at_tpr_one_keeps_every_id_sample():
    assert fpr_at_tpr([3.0, 1.0, 2.0], [0.5, 1.0, 1.5], tpr=1.0) == pytest.approx(2 / 3)


def test_id_and_ood_roles_are_not_interchangeable():
    # ID mostly high; swapping the arguments must change every metric
    id_scores = np.array([10.0, 9.0, 8.0, 7.0, 0.0])
    ood_scores = np.array([1.0, 2.0, 3.0])
    forward = ood_metrics(id_scores, ood_scores)
    swapped = ood_metrics(ood_scores, id_scores)
    # AUROC by hand: pairs (id > ood) = 4 * 3 + 0 = 12 of 15
    assert forward["auroc"] == pytest.approx(12 / 15)
    assert swapped["auroc"] == pytest.approx(3 / 15)
    # FPR95: ceil(4.75) = 5 -> threshold = 0 -> every OOD score passes
    assert forward["fpr95"] == 1.0
    # swapped: ceil(2.85) = 3 -> threshold = 1 -> "OOD" {10, 9, 8, 7} pass, 0 does not
    assert swapped["fpr95"] == pytest.approx(4 / 5)
    # AUPR-In by hand: ranking 10 9 8 7 | 3 2 1 | 0 -> precision at each ID hit:
    # 1, 1, 1, 1, 5/8 with recall steps of 1/5 -> (4 + 5/8) / 5
    assert forward["aupr_in"] == pytest.approx((4 + 5 / 8) / 5)
    assert forward["aupr_out"] != pytest.approx(forward["aupr_in"])


def test_perfect_separation():
    metrics = ood_metrics(np.array([5.0, 6.0, 7.0]), np.array([-1.0, 0.0, 4.9]))
    assert metrics == {"fpr95": 0.0, "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}


def test_infinite_scores_are_ranked_and_tied_correctly():
    id_scores = np.array([np.inf, np.inf, 1.0])
    ood_scores = np.array([np.inf, -np.inf, 0.0])
    expected = sklearn_reference(np.nan_to_num(id_scores, posinf=1e300, neginf=-1e300),
                                 np.nan_to_num(ood_scores, posinf=1e300, neginf=-1e300))
    got = ood_metrics(id_scores, ood_scores)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("bad, message", [
    (([], [1.0]), "id_scores.*empty"),
    (([1.0], []), "ood_scores.*empty"),
    (([1.0, np.nan], [1.0]), "id_scores: 1 of 2 scores are NaN"),
    (([1.0], [np.nan]), "ood_scores: 1 of 1 scores are NaN"),
    (([[1.0]], [1.0]), "id_scores.*1-D"),
])
def test_bad_input_names_the_argument(bad, message):
    with pytest.raises(ValueError, match=message):
        ood_metrics(*bad)


def test_roc_curve_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    id_scores = rng.integers(0, 6, 40).astype(float)  # few distinct values: many ties
    ood_scores = rng.integers(0, 6, 30).astype(float) - 1
    fpr, tpr = roc_curve(id_scores, ood_scores)
    labels = np.r_[np.ones(40), np.zeros(30)]
    ref_fpr, ref_tpr, _ = sklearn_roc_curve(labels, np.r_[id_scores, ood_scores], drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(id_scores, ood_scores))
