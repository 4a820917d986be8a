import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from utils.ood.metrics import aupr_in, aupr_out, auroc, fpr_at_95_tpr, fpr_at_recall, ood_metrics, roc_curve


def brute_force_fpr95(id_scores, ood_scores, recall_level=0.95):
    """FPR95 by the official rule, written as a plain loop over thresholds (no sorting tricks):
    every distinct score t >= the lowest ID score is a candidate (a sample is kept when its score
    >= t); the candidate whose ID recall is closest to `recall_level` wins, the lowest threshold
    on a tie; FPR = OOD kept / all OOD."""
    id_scores, ood_scores = list(map(float, id_scores)), list(map(float, ood_scores))
    best_distance, best_fpr = None, None
    for threshold in sorted(set(id_scores + ood_scores)):       # lowest threshold first
        if threshold < min(id_scores):
            continue
        recall = sum(score >= threshold for score in id_scores) / len(id_scores)
        distance = abs(recall - recall_level)
        if best_distance is None or distance < best_distance:
            best_distance = distance
            best_fpr = sum(score >= threshold for score in ood_scores) / len(ood_scores)
    return best_fpr


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
    # 20 ID scores: 0..18 and a second 5. Recall 19/20 = 0.95 exactly needs 19 ID kept: sorted
    # descending 18, ..., 6 (13), 5, 5 (15), 4, 3, 2, 1 (19). Every threshold t in (0, 1] keeps those
    # 19: the candidates t = 1, 0.99 and 0.5 (OOD values) all have recall 0.95, and the lowest, 0.5,
    # wins. OOD scores >= 0.5: {0.5, 1, 1, 5, 7, 0.99} out of {0, 0.5, 1, 1, 5, 7, -3, 0.99} -> 6 / 8.
    id_scores = np.r_[np.arange(19.0), 5.0]
    ood_scores = np.array([0, 0.5, 1, 1, 5, 7, -3, 0.99])
    assert fpr_at_95_tpr(id_scores, ood_scores) == 0.75


def test_fpr95_takes_the_closest_recall_even_below_95():
    # 17 ID scores 1..17: recall 16/17 = 0.941 (threshold 2, distance 0.009) is closer to 0.95 than
    # 17/17 (threshold 1, distance 0.05). OOD >= 2: {2, 10} of {0.5, 1, 2, 10} -> 1/2. (The rule
    # "first recall >= 0.95" would take threshold 1 and give 3/4.)
    id_scores, ood_scores = np.arange(1.0, 18.0), np.array([0.5, 1, 2, 10])
    assert fpr_at_95_tpr(id_scores, ood_scores) == 0.5


def test_fpr95_equal_recall_takes_the_lowest_threshold():
    # ID: ten 5s and one 1 (11); OOD {5, 3, 0}. Candidates t >= 1: t = 5 (recall 10/11, 1 OOD
    # kept), t = 3 (recall 10/11, 2 OOD kept), t = 1 (recall 1, 2 OOD kept). 10/11 is closest
    # (0.041 vs 0.05) at t = 5 and t = 3; the lower threshold t = 3 wins -> 2/3.
    id_scores, ood_scores = np.r_[np.full(10, 5.0), 1.0], np.array([5.0, 3.0, 0.0])
    assert fpr_at_95_tpr(id_scores, ood_scores) == pytest.approx(2 / 3)


def test_fpr95_threshold_tie_counts_ood_at_threshold():
    # 10 ID scores: recall 8/10 at t = 3 (distance 0.15), 10/10 at t = 2 (distance 0.05) -> t = 2.
    # OOD {2, 2, 1.999}: the two equal to the threshold count as false positives -> 2/3.
    id_scores = np.array([9, 8, 7, 6, 5, 4, 3, 3, 2, 2.0])
    ood_scores = np.array([2, 2, 1.999])
    assert fpr_at_95_tpr(id_scores, ood_scores) == pytest.approx(2 / 3)
    # 100 ID scores 1..100: recall 95/100 at thresholds 6 and 5.9 (an OOD value, no ID score between
    # 5.9 and 5); the lower one, 5.9, wins: OOD 6, 5.9 and 100 count, 0 not -> 3/4
    assert fpr_at_95_tpr(np.arange(1.0, 101.0), np.array([6.0, 5.9, 100.0, 0.0])) == 0.75


@pytest.mark.parametrize("seed", range(20))
def test_fpr95_matches_the_brute_force_loop(seed):
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(1, 120, size=2)
    id_scores, ood_scores = rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)
    if seed % 2:  # few distinct values: ties within and across the two sets
        id_scores, ood_scores = np.round(2 * id_scores) / 2, np.round(2 * ood_scores) / 2
    for level in (0.95, 0.5, 1.0):
        assert fpr_at_recall(id_scores, ood_scores, level) == brute_force_fpr95(id_scores, ood_scores, level)


def test_fpr_at_recall_one_keeps_every_id_sample():
    assert fpr_at_recall([3.0, 1.0, 2.0], [0.5, 1.0, 1.5], recall_level=1.0) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="recall_level must be in"):
        fpr_at_recall([1.0], [0.0], recall_level=0.0)


def test_id_and_ood_roles_are_not_interchangeable():
    # ID mostly high; swapping the arguments must change every metric
    id_scores = np.array([10.0, 9.0, 8.0, 7.0, 0.0])
    ood_scores = np.array([1.0, 2.0, 3.0])
    forward = ood_metrics(id_scores, ood_scores)
    swapped = ood_metrics(ood_scores, id_scores)
    # AUROC by hand: pairs (id > ood) = 4 * 3 + 0 = 12 of 15
    assert forward["auroc"] == pytest.approx(12 / 15)
    assert swapped["auroc"] == pytest.approx(3 / 15)
    # FPR95: recall 4/5 at t = 7 (distance 0.15), 5/5 at t = 0 (0.05) -> every OOD score passes
    assert forward["fpr95"] == 1.0
    # swapped: recall 2/3 at t = 2, 3/3 at t = 1 (closest) -> "OOD" {10, 9, 8, 7} pass, 0 does not
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
