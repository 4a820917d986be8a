"""OOD detection metrics: FPR at 95 % TPR, AUROC, AUPR-In, AUPR-Out.

Convention (docs/CONTRACTS.md §5): in-distribution (ID) is the positive class and every score
is "higher = more in-distribution". All metrics are fractions in [0, 1].

FPR95 follows the official DFB evaluation (Hendrycks' `fpr_and_fdr_at_recall`, see
`fpr_at_recall`): the ROC point whose ID recall is CLOSEST to 0.95, which may lie below it.

Written with numpy only (sort / rank based). The tests check FPR95 against a plain loop over
thresholds, and AUROC / AUPR against scikit-learn's `roc_auc_score` and step-wise
`average_precision_score`: they agree exactly, ties included.
"""
import numpy as np
from numpy.typing import ArrayLike


def _check_scores(scores, name):
    """1-D float64 array without NaN; a clear error names the argument otherwise."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of scores, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: expected at least one score, got an empty array")
    nans = int(np.isnan(array).sum())
    if nans:
        raise ValueError(f"{name}: {nans} of {array.size} scores are NaN")
    return array


def fpr_at_recall(id_scores: ArrayLike, ood_scores: ArrayLike, recall_level: float = 0.95) -> float:
    """FPR at the ROC point whose recall of ID is closest to `recall_level`: the rule of
    Hendrycks' `fpr_and_fdr_at_recall`, which the official DFB evaluation reports as FPR95.

    The candidate points are the distinct score values t taken as thresholds (a sample is
    kept when its score >= t), from high to low, up to the first t that keeps every ID
    sample (lower thresholds only add OOD samples and are not candidates). The point with
    the smallest |recall - recall_level| wins; on a tie the lower threshold wins (more ID
    kept, more OOD kept), because the official code scans the points from low thresholds to
    high and keeps the first minimum. FPR = OOD samples kept / all OOD samples.
    """
    id_scores = _check_scores(id_scores, "id_scores")
    ood_scores = _check_scores(ood_scores, "ood_scores")
    if not 0.0 < recall_level <= 1.0:
        raise ValueError(f"recall_level must be in (0, 1], got {recall_level}")
    id_kept, kept = _counts_above_thresholds(id_scores, ood_scores)
    # candidates: thresholds up to the first one that keeps every ID sample
    last = int(np.searchsorted(id_kept, id_scores.size))
    id_kept, ood_kept = id_kept[:last + 1][::-1], (kept - id_kept)[:last + 1][::-1]
    # the distance computed as the official code does (recall = kept / total, then |recall - level|),
    # so that floating-point near-ties resolve the same way
    distance = np.abs(id_kept / id_scores.size - recall_level)
    return float(ood_kept[np.argmin(distance)] / ood_scores.size)


def fpr_at_95_tpr(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """FPR95: `fpr_at_recall` at recall 0.95 (the official evaluation's FPR95)."""
    return fpr_at_recall(id_scores, ood_scores, 0.95)


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under the ROC curve = P(score_id > score_ood) + 1/2 P(score_id = score_ood).

    Computed as the Mann-Whitney U statistic from mid-ranks (tied scores share the
    average of their ranks, which is what makes ties count one half).
    """
    id_scores = _check_scores(id_scores, "id_scores")
    ood_scores = _check_scores(ood_scores, "ood_scores")
    n_id, n_ood = id_scores.size, ood_scores.size
    _, group, counts = np.unique(np.concatenate([id_scores, ood_scores]),
                                 return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0     # 1-based ranks
    id_rank_sum = mid_rank[group[:n_id]].sum()
    u_statistic = id_rank_sum - n_id * (n_id + 1) / 2.0
    return float(u_statistic / (n_id * n_ood))


def _counts_above_thresholds(positive_scores, negative_scores):
    """(positives kept, all kept) at each distinct threshold t from high to low, where a sample
    is kept when its score >= t; tied scores enter together."""
    scores = np.concatenate([positive_scores, negative_scores])
    is_positive = np.concatenate([np.ones(positive_scores.size), np.zeros(negative_scores.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_positive = scores[order], is_positive[order]
    # last index of every run of equal scores (`!=` instead of np.diff: inf - inf is NaN)
    run_ends = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    return np.cumsum(is_positive)[run_ends], run_ends + 1


def _average_precision(positive_scores, negative_scores):
    """Step-wise average precision: AP = sum_n (R_n - R_(n-1)) P_n over distinct thresholds.

    This is scikit-learn's `average_precision_score` definition (no interpolation).
    """
    true_pos, kept = _counts_above_thresholds(positive_scores, negative_scores)
    precision = true_pos / kept
    recall = true_pos / positive_scores.size
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def roc_curve(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC curve with ID positive, one point per distinct threshold, from (0, 0):
    at threshold t, tpr = #{id >= t} / n_id and fpr = #{ood >= t} / n_ood."""
    id_scores = _check_scores(id_scores, "id_scores")
    ood_scores = _check_scores(ood_scores, "ood_scores")
    id_kept, kept = _counts_above_thresholds(id_scores, ood_scores)
    return np.r_[0.0, (kept - id_kept) / ood_scores.size], np.r_[0.0, id_kept / id_scores.size]


def aupr_in(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under the precision-recall curve with ID as the positive class (average precision)."""
    id_scores = _check_scores(id_scores, "id_scores")
    ood_scores = _check_scores(ood_scores, "ood_scores")
    return _average_precision(id_scores, ood_scores)


def aupr_out(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under the precision-recall curve with OOD as the positive class (scores negated)."""
    id_scores = _check_scores(id_scores, "id_scores")
    ood_scores = _check_scores(ood_scores, "ood_scores")
    return _average_precision(-ood_scores, -id_scores)


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> dict[str, float]:
    """All four metrics as a dict {fpr95, auroc, aupr_in, aupr_out} of fractions in [0, 1]."""
    id_scores = _check_scores(id_scores, "id_scores")
    ood_scores = _check_scores(ood_scores, "ood_scores")
    return {
        "fpr95": fpr_at_95_tpr(id_scores, ood_scores),
        "auroc": auroc(id_scores, ood_scores),
        "aupr_in": aupr_in(id_scores, ood_scores),
        "aupr_out": aupr_out(id_scores, ood_scores),
    }
