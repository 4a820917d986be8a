"""DFB: fuse a foreground OOD score with the background logit of a (K+1)-class network.

A DFB network outputs K+1 image-level logits z, background LAST. The K foreground
logits (and the pooled feature) feed any existing post-hoc score S_fg
(`utils.ood.scores`). What the paper states of the (K+1)-th class is that it captures the
ID background features and that its prediction gives a background OOD score; it does
not say in which direction. So the direction is chosen on validation data, like T.
Higher scores mean more in-distribution throughout.

The paper's exact fusion formula was not available, so this module implements a
small, explicit family (README, "Scores and the DFB fusion"), every member reported:

    'logit'   : S = S_fg - sign * z_bg / T
    'prob'    : S = S_fg - sign * T * p_bg
    'logprob' : S = S_fg + sign * T * log(1 - p_bg)

with p = softmax over all K+1 logits. sign = +1 treats a large background logit as
evidence of OOD, sign = -1 as evidence of ID (the familiar ID background). Neither is
assumed: the sign and T of each (method, mode) are picked by `select_fusion` on ID data
and a VALIDATION OOD set (patch-shuffled held-out ID images, or a real folder kept apart
from the test sets), never on a test OOD set. By default T is searched within a factor of 10 of the balanced temperature,
at which the background term varies as much over the ID images as the foreground score:
the validation set can tilt the balance but not hand the score to one term alone.
"""
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import logsumexp

from utils.ood.metrics import auroc

DEFAULT_FUSION = "logit"

# Multiples of the balanced temperature searched by default: 1/10 .. 10, 4 per decade
RELATIVE_GRID = np.logspace(-1, 1, 9)

# AUROCs are multiples of 1 / (n_id * n_ood); closer values are rounding noise, i.e. ties
_AUROC_TIE = 1e-12


class FusionChoiceBackground(NamedTuple):
    sign: int
    auroc: float   # validation AUROC of the background score in that direction


def split_logits(logits_k1: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(foreground logits [N, K], background logit [N]) of (K+1)-class logits, background last."""
    logits = np.asarray(logits_k1, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits_k1: expected [N, K+1] logits with K >= 1 (background last), "
                         f"got shape {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits_k1: contains NaN or infinite values")
    return logits[:, :-1], logits[:, -1]


def background_score(logits_k1: ArrayLike, sign: int = 1) -> np.ndarray:
    """The background logit alone as an OOD score: -sign * z_bg (sign as in the fusions: +1 = a
    large background logit means OOD, -1 = it means ID)."""
    _, background = split_logits(logits_k1)
    if sign not in (1, -1):
        raise ValueError(f"sign: expected +1 or -1, got {sign}")
    return (-sign * background).astype(np.float32)


def select_background_sign(id_logits: ArrayLike, val_ood_logits: ArrayLike) -> FusionChoiceBackground:
    """The direction of the background logit alone on validation data: +1 when -z_bg ranks the ID
    images above the validation OOD ones (AUROC >= 0.5), else -1. An AUROC of exactly 0.5 (the
    validation data say nothing) keeps +1, a convention: that case is a tie whichever sign is taken."""
    value = auroc(background_score(id_logits), background_score(val_ood_logits))
    return FusionChoiceBackground(1, value) if value >= 0.5 else FusionChoiceBackground(-1, 1 - value)


def _check_fusion_args(fg_score, logits_k1, temperature, sign):
    foreground, background = split_logits(logits_k1)
    fg_score = np.asarray(fg_score, dtype=np.float64)
    if fg_score.shape != background.shape:
        raise ValueError(f"fg_score: expected shape {background.shape} (one score per row of logits_k1), "
                         f"got {fg_score.shape}")
    if not np.isfinite(fg_score).all():
        raise ValueError("fg_score: contains NaN or infinite values")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a finite value > 0, got {temperature}")
    if sign not in (1, -1):
        raise ValueError(f"sign: expected +1 or -1, got {sign}")
    return fg_score, foreground, background


def fuse_logit(fg_score: ArrayLike, logits_k1: ArrayLike, temperature: float, sign: int = 1) -> np.ndarray:
    """S = S_fg - sign * z_bg / T (larger T: weaker background term)."""
    fg_score, _, background = _check_fusion_args(fg_score, logits_k1, temperature, sign)
    return fg_score - sign * background / temperature


def fuse_prob(fg_score: ArrayLike, logits_k1: ArrayLike, temperature: float, sign: int = 1) -> np.ndarray:
    """S = S_fg - sign * T * p_bg, p_bg = softmax(z)_bg over all K+1 logits (smaller T: weaker)."""
    fg_score, foreground, background = _check_fusion_args(fg_score, logits_k1, temperature, sign)
    all_logits = np.column_stack([foreground, background])
    p_background = np.exp(background - logsumexp(all_logits, axis=1))
    return fg_score - sign * temperature * p_background


def fuse_logprob(fg_score: ArrayLike, logits_k1: ArrayLike, temperature: float, sign: int = 1) -> np.ndarray:
    """S = S_fg + sign * T * log(1 - p_bg) (smaller T: weaker).

    log(1 - p_bg) = logsumexp(z_fg) - logsumexp(z): finite even when p_bg rounds to 1.
    """
    fg_score, foreground, background = _check_fusion_args(fg_score, logits_k1, temperature, sign)
    all_logits = np.column_stack([foreground, background])
    log_not_background = logsumexp(foreground, axis=1) - logsumexp(all_logits, axis=1)
    return fg_score + sign * temperature * log_not_background


FUSIONS = {"logit": fuse_logit, "prob": fuse_prob, "logprob": fuse_logprob}

# Whether a larger T weakens the background term (it divides in 'logit', multiplies otherwise)
_LARGER_T_IS_WEAKER = {"logit": True, "prob": False, "logprob": False}


def background_term(logits_k1: ArrayLike, mode: str) -> np.ndarray:
    """What each mode subtracts (times sign and its weight): z_bg, p_bg or -log(1 - p_bg)."""
    _check_mode(mode)
    foreground, background = split_logits(logits_k1)
    log_all = logsumexp(np.column_stack([foreground, background]), axis=1)
    if mode == "logit":
        return background
    if mode == "prob":
        return np.exp(background - log_all)
    return log_all - logsumexp(foreground, axis=1)


def balanced_temperature(id_fg: ArrayLike, id_logits: ArrayLike, mode: str) -> float:
    """T at which the background term's standard deviation over the ID images equals that of
    the foreground score (weight 1/T in 'logit' mode, T otherwise). Uses ID data only."""
    fg_spread = float(np.std(np.asarray(id_fg, dtype=np.float64)))
    term_spread = float(np.std(background_term(id_logits, mode)))
    if not fg_spread > 0 or not term_spread > 0:
        return 1.0  # one side is constant on ID data: no scale to match
    ratio = term_spread / fg_spread
    return ratio if _LARGER_T_IS_WEAKER[mode] else 1.0 / ratio


class FusionChoice(NamedTuple):
    sign: int
    temperature: float
    auroc: float   # validation AUROC (ID vs pseudo-OOD) of the chosen fusion


def _check_mode(mode):
    if mode not in FUSIONS:
        raise ValueError(f"fusion mode: expected one of {list(FUSIONS)}, got {mode!r}")


def select_fusion(id_fg: ArrayLike, id_logits: ArrayLike, val_ood_fg: ArrayLike, val_ood_logits: ArrayLike,
                  mode: str, temperatures: ArrayLike | None = None,
                  signs: Sequence[int] = (1, -1)) -> FusionChoice:
    """(sign, T, auroc) maximising the AUROC of ID vs a validation pseudo-OOD set.

    temperatures: the grid to search; None = RELATIVE_GRID times the balanced temperature
    of (id_fg, id_logits).

    The caller guarantees that (val_ood_fg, val_ood_logits) is NOT one of the test OOD
    sets (e.g. a held-out or synthetic pseudo-OOD set): choosing on a test set would
    leak it into the reported results. Ties go to the sign in which the background logit
    ALONE separates the same validation data (`select_background_sign`), then to the
    weaker background term (larger T for 'logit', smaller T otherwise): both are read off
    the validation data, so no direction is assumed.
    """
    _check_mode(mode)
    if temperatures is None:
        temperatures = RELATIVE_GRID * balanced_temperature(id_fg, id_logits, mode)
    temperatures = np.asarray(temperatures, dtype=np.float64).ravel()
    if temperatures.size == 0 or not (np.isfinite(temperatures) & (temperatures > 0)).all():
        raise ValueError(f"temperatures: expected finite values > 0, got {temperatures}")
    if not signs or any(sign not in (1, -1) for sign in signs):
        raise ValueError(f"signs: expected a non-empty subset of (+1, -1), got {signs}")
    fuse = FUSIONS[mode]
    weakest_first = np.sort(temperatures)
    if _LARGER_T_IS_WEAKER[mode]:
        weakest_first = weakest_first[::-1]
    background_sign = select_background_sign(id_logits, val_ood_logits).sign
    best = None
    for sign in sorted(set(signs), key=lambda sign: sign != background_sign):  # the background's own sign first
        for temperature in weakest_first:
            value = auroc(fuse(id_fg, id_logits, temperature, sign),
                          fuse(val_ood_fg, val_ood_logits, temperature, sign))
            if best is None or value > best.auroc + _AUROC_TIE:
                best = FusionChoice(sign, float(temperature), value)
    return best


def fusion_name(method: str, mode: str | None = None) -> str:
    """'DFB-<method>' for the default fusion, 'DFB-<method>[<mode>]' for a named mode."""
    return f"DFB-{method}" if mode is None else f"DFB-{method}[{mode}]"


def select_all_fusions(id_fg_scores: Mapping[str, ArrayLike], id_logits: ArrayLike,
                       val_fg_scores: Mapping[str, ArrayLike], val_logits: ArrayLike,
                       modes: Sequence[str] = tuple(FUSIONS), temperatures: ArrayLike | None = None,
                       signs: Sequence[int] = (1, -1)) -> dict[tuple[str, str], FusionChoice]:
    """{(method, mode): FusionChoice} for every method of `id_fg_scores` and every mode.

    id_fg_scores / val_fg_scores: {method: [N] foreground scores} of the ID set and of the
    validation pseudo-OOD set (never a test OOD set); *_logits their [N, K+1] logits.
    """
    missing = set(id_fg_scores) - set(val_fg_scores)
    if missing:
        raise ValueError(f"val_fg_scores: no scores for methods {sorted(missing)}")
    return {(method, mode): select_fusion(id_fg_scores[method], id_logits, val_fg_scores[method],
                                          val_logits, mode, temperatures, signs)
            for method in id_fg_scores for mode in modes}


def apply_fusions(fg_scores: Mapping[str, Mapping[str, ArrayLike]], logits: Mapping[str, ArrayLike],
                  choices: Mapping[tuple[str, str], Sequence],
                  default_mode: str = DEFAULT_FUSION) -> dict[str, dict[str, np.ndarray]]:
    """DFB scores {name: {set: float32 [N]}} for every (method, mode) in `choices`.

    fg_scores: {method: {set: [N]}}; logits: {set: [N, K+1]}; choices: {(method, mode):
    (sign, T, ...)}, e.g. from select_all_fusions. Names: 'DFB-<method>' (the default mode)
    and 'DFB-<method>[<mode>]' for every chosen mode, the default one included.
    """
    _check_mode(default_mode)
    fused = {}
    for method, by_set in fg_scores.items():
        modes = [mode for mode in FUSIONS if (method, mode) in choices]
        if default_mode not in modes:
            raise ValueError(f"choices: no ({method!r}, {default_mode!r}) entry for the default fusion")
        missing = set(by_set) - set(logits)
        if missing:
            raise ValueError(f"logits: no [N, K+1] logits for sets {sorted(missing)}")
        for mode in [None] + modes:
            sign, temperature = choices[method, mode or default_mode][:2]
            fused[fusion_name(method, mode)] = {
                name: FUSIONS[mode or default_mode](scores, logits[name], temperature, sign).astype(np.float32)
                for name, scores in by_set.items()}
    return fused
