import numpy as np
import pytest

from utils.ood.fusion import (DEFAULT_FUSION, FUSIONS, apply_fusions, background_score, balanced_temperature,
                              fusion_name, select_all_fusions, select_background_sign, select_fusion, split_logits)
from utils.ood.metrics import auroc

# 49 temperatures, 4 per decade from 1e-6 to 1e6, shared by every mode. A foreground
# score spans ~1 (MSP, GEN) to ~1e4 (Mahalanobis); z_bg spans ~10, p_bg 1 and
# log(1 - p_bg) ~10. Over this grid each mode's background term goes from swamping
# the widest foreground score (pure background ranking) to vanishing below the
# resolution of the narrowest one (pure foreground ranking).
ABSOLUTE_GRID = np.logspace(-6, 6, 49)


@pytest.fixture
def logits_k1():
    return np.random.default_rng(0).normal(0, 3, size=(30, 5))   # K = 4, background last


def test_split_logits_puts_background_last(logits_k1):
    foreground, background = split_logits(logits_k1)
    np.testing.assert_array_equal(foreground, logits_k1[:, :4])
    np.testing.assert_array_equal(background, logits_k1[:, 4])
    with pytest.raises(ValueError, match=r"logits_k1: expected \[N, K\+1\]"):
        split_logits(np.zeros((3, 1)))


def test_background_score_is_higher_for_less_background():
    foreground_like = [5.0, 0.0, -2.0]
    background_like = [0.0, 0.0, 6.0]
    scores = background_score(np.array([foreground_like, background_like]))
    assert scores[0] > scores[1]
    np.testing.assert_array_equal(scores, [2.0, -6.0])
    assert scores.dtype == np.float32


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("temperature", [0.1, 3.0])
def test_fusions_match_direct_formulas(logits_k1, sign, temperature):
    fg = np.random.default_rng(1).normal(size=len(logits_k1))
    z_bg = logits_k1[:, -1]
    p_bg = np.exp(z_bg) / np.exp(logits_k1).sum(axis=1)
    np.testing.assert_allclose(FUSIONS["logit"](fg, logits_k1, temperature, sign),
                               fg - sign * z_bg / temperature, rtol=1e-12)
    np.testing.assert_allclose(FUSIONS["prob"](fg, logits_k1, temperature, sign),
                               fg - sign * temperature * p_bg, rtol=1e-12)
    np.testing.assert_allclose(FUSIONS["logprob"](fg, logits_k1, temperature, sign),
                               fg + sign * temperature * np.log(1 - p_bg), rtol=1e-9)


def test_default_sign_penalises_background():
    fg = np.zeros(2)
    logits = np.array([[3.0, 0.0, -1.0], [3.0, 0.0, 4.0]])   # second image: much more background
    for mode, fuse in FUSIONS.items():
        scores = fuse(fg, logits, 1.0)
        assert scores[0] > scores[1], mode
        flipped = fuse(fg, logits, 1.0, sign=-1)
        assert flipped[0] < flipped[1], mode


def test_logprob_is_finite_for_extreme_logits():
    # p_bg rounds to exactly 1 in float64; log(1 - p_bg) must still be finite.
    # By hand: logsumexp([-1000, -1000]) = -1000 + log 2, logsumexp(all) = 1000 (+ e^-2000)
    logits = np.array([[-1000.0, -1000.0, 1000.0], [1000.0, -1000.0, -1000.0]])
    fg = np.array([0.5, 0.5])
    fused = FUSIONS["logprob"](fg, logits, 2.0)
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused[0], 0.5 + 2.0 * (-2000.0 + np.log(2)), rtol=1e-12)
    np.testing.assert_allclose(fused[1], 0.5, atol=1e-12)       # p_bg ~ e^-2000: no penalty
    for mode, fuse in FUSIONS.items():
        assert np.isfinite(fuse(fg, logits, 1e-6)).all(), mode
        assert np.isfinite(fuse(fg, logits, 1e6)).all(), mode


# ---------------------------------------------------------------- selection

def planted_data(rng, mode, background_is_ood, n=4000):
    """Foreground scores and logits whose background term is Gaussian per class.

    fg ~ N(1, 1) for ID, N(0, 1) for OOD. The mode's background variable v (z_bg, p_bg or
    log(1 - p_bg)) shifts by `delta` between ID and OOD with std `std`; for Gaussians with equal
    variances the AUROC-optimal linear combination is Fisher's: weight delta / std^2 on v
    relative to weight 1 on fg, which fixes the planted T (1/T for 'logit', T otherwise).
    """
    delta, std, planted_t = {"logit": (1.0, 0.1 ** 0.5, 0.1), "prob": (0.1, 0.1, 10.0),
                             "logprob": (0.1, 0.1, 10.0)}[mode]
    base = {"logit": 0.0, "prob": 0.3, "logprob": -1.0}[mode]
    # direction in which v moves when an image has more background
    more_background = -1.0 if mode == "logprob" else 1.0
    shift = delta * more_background * (1 if background_is_ood else -1)
    v_id = rng.normal(base, std, n)
    v_ood = rng.normal(base + shift, std, n)

    def logits_for(v):
        # K = 2 foreground logits at 0, so p_bg = e^b / (2 + e^b)  <=>  b = log(2 p / (1 - p))
        if mode == "logit":
            background = v
        else:
            p_bg = np.clip(v if mode == "prob" else 1 - np.exp(v), 1e-4, 1 - 1e-4)
            background = np.log(2 * p_bg / (1 - p_bg))
        return np.column_stack([np.zeros((len(v), 2)), background])

    return rng.normal(1, 1, n), logits_for(v_id), rng.normal(0, 1, n), logits_for(v_ood), planted_t


@pytest.mark.parametrize("mode", list(FUSIONS))
@pytest.mark.parametrize("background_is_ood", [True, False])
def test_selection_finds_planted_sign_and_temperature(mode, background_is_ood):
    rng = np.random.default_rng(2)
    id_fg, id_logits, ood_fg, ood_logits, planted_t = planted_data(rng, mode, background_is_ood)
    choice = select_fusion(id_fg, id_logits, ood_fg, ood_logits, mode)
    assert choice.sign == (1 if background_is_ood else -1)
    # within one grid step (10^0.25) of Fisher's optimum (AUROC is flat near its maximum)
    assert abs(np.log10(choice.temperature / planted_t)) <= 0.25
    assert choice.auroc > auroc(id_fg, ood_fg) + 0.05          # the background carries signal
    fused = FUSIONS[mode](id_fg, id_logits, choice.temperature, choice.sign)
    fused_ood = FUSIONS[mode](ood_fg, ood_logits, choice.temperature, choice.sign)
    assert choice.auroc == pytest.approx(auroc(fused, fused_ood))


@pytest.mark.parametrize("mode, weakest", [("logit", ABSOLUTE_GRID.max()), ("prob", ABSOLUTE_GRID.min()),
                                           ("logprob", ABSOLUTE_GRID.min())])
@pytest.mark.parametrize("background_is_ood", [True, False])
def test_ties_go_to_the_background_alone_sign_and_weakest_background_term(mode, weakest, background_is_ood):
    # foreground separates perfectly: every weak enough fusion of either sign reaches AUROC 1.
    # The background logit alone leans one way on the same validation data: that sign wins the tie
    rng = np.random.default_rng(3)
    id_logits, ood_logits = rng.normal(size=(50, 3)), rng.normal(size=(60, 3))
    ood_logits[:, -1] += 0.5 if background_is_ood else -0.5
    expected_sign = 1 if background_is_ood else -1
    assert select_background_sign(id_logits, ood_logits).sign == expected_sign
    choice = select_fusion(np.full(50, 10.0), id_logits, np.zeros(60), ood_logits, mode, ABSOLUTE_GRID)
    assert choice == (expected_sign, weakest, 1.0)
    only_other = select_fusion(np.full(50, 10.0), id_logits, np.zeros(60), ood_logits, mode, ABSOLUTE_GRID,
                               signs=(-expected_sign,))
    assert only_other.sign == -expected_sign


def test_background_sign_is_read_off_the_validation_data():
    rng = np.random.default_rng(5)
    id_logits, ood_logits = rng.normal(size=(80, 3)), rng.normal(size=(90, 3))
    ood_logits[:, -1] -= 2.0  # OOD has the SMALLER background logit here
    choice = select_background_sign(id_logits, ood_logits)
    assert choice.sign == -1
    assert choice.auroc == pytest.approx(auroc(background_score(id_logits, -1), background_score(ood_logits, -1)))
    assert choice.auroc > 0.85
    np.testing.assert_array_equal(background_score(id_logits, -1), id_logits[:, -1].astype(np.float32))
    with pytest.raises(ValueError, match="sign"):
        background_score(id_logits, 0)


def test_select_all_and_apply_fusions_names_and_values():
    rng = np.random.default_rng(4)
    id_fg, id_logits, val_fg, val_logits, _ = planted_data(rng, "logit", True, n=200)
    choices = select_all_fusions({"Energy": id_fg, "MSP": id_fg / 10}, id_logits,
                                 {"Energy": val_fg, "MSP": val_fg / 10}, val_logits)
    assert set(choices) == {(m, mode) for m in ("Energy", "MSP") for mode in FUSIONS}
    test_logits = rng.normal(size=(7, 3))
    fg_scores = {"Energy": {"test_set": rng.normal(size=7)}, "MSP": {"test_set": rng.random(7)}}
    fused = apply_fusions(fg_scores, {"test_set": test_logits}, choices)
    assert list(fused) == ["DFB-Energy", "DFB-Energy[logit]", "DFB-Energy[prob]", "DFB-Energy[logprob]",
                           "DFB-MSP", "DFB-MSP[logit]", "DFB-MSP[prob]", "DFB-MSP[logprob]"]
    for method in ("Energy", "MSP"):
        for mode in FUSIONS:
            sign, temperature, _ = choices[method, mode]
            expected = FUSIONS[mode](fg_scores[method]["test_set"], test_logits, temperature, sign)
            got = fused[fusion_name(method, mode)]["test_set"]
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, expected, rtol=1e-6)
        np.testing.assert_array_equal(fused[fusion_name(method)]["test_set"],
                                      fused[fusion_name(method, DEFAULT_FUSION)]["test_set"])


def test_clear_errors(logits_k1):
    fg = np.zeros(len(logits_k1))
    with pytest.raises(ValueError, match="fg_score: expected shape"):
        FUSIONS["logit"](fg[:3], logits_k1, 1.0)
    with pytest.raises(ValueError, match="temperature: expected a finite value > 0"):
        FUSIONS["prob"](fg, logits_k1, 0.0)
    with pytest.raises(ValueError, match="sign: expected"):
        FUSIONS["logprob"](fg, logits_k1, 1.0, sign=2)
    with pytest.raises(ValueError, match="fusion mode: expected one of"):
        select_fusion(fg, logits_k1, fg, logits_k1, "product")
    with pytest.raises(ValueError, match="no \\('Energy', 'logit'\\) entry"):
        apply_fusions({"Energy": {"a": fg}}, {"a": logits_k1}, {("Energy", "prob"): (1, 1.0, 0.5)})
    with pytest.raises(ValueError, match="logits: no \\[N, K\\+1\\] logits for sets \\['a'\\]"):
        apply_fusions({"Energy": {"a": fg}}, {}, {("Energy", "logit"): (1, 1.0, 0.5)})


@pytest.mark.parametrize("mode", list(FUSIONS))
def test_balanced_temperature_matches_spreads_and_bounds_the_default_search(mode):
    rng = np.random.default_rng(5)
    id_logits = rng.normal(scale=3.0, size=(400, 4))
    id_logits[:, -1] = rng.normal(scale=0.1, size=400)  # a background logit that barely varies on ID
    id_fg = rng.normal(scale=7.0, size=400)
    temperature = balanced_temperature(id_fg, id_logits, mode)
    # the fused background part alone, computed as fused score minus foreground score
    background_part = FUSIONS[mode](id_fg, id_logits, temperature, 1) - id_fg
    np.testing.assert_allclose(background_part.std(), id_fg.std(), rtol=1e-9)
    # the validation set differs only by a larger background logit, so a stronger background
    # term always helps: the full grid would go to its end, the default search stops at 10x
    val_logits = id_logits.copy()
    val_logits[:, -1] += 0.05  # half the background's ID spread: AUROC grows with the weight, never reaching 1
    choice = select_fusion(id_fg, id_logits, id_fg, val_logits, mode)
    assert choice.sign == 1
    assert np.isclose(choice.temperature, temperature / 10 if mode == "logit" else temperature * 10)
    unbounded = select_fusion(id_fg, id_logits, id_fg, val_logits, mode, ABSOLUTE_GRID)
    assert unbounded.auroc >= choice.auroc
