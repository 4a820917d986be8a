import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from sklearn.neighbors import NearestNeighbors

from utils.ood.metrics import auroc
from utils.ood.scores import (SCORES, IDTrainStats, compute_all_scores, make_scores, odin_perturb,
                              vim_principal_dim)

RTOL = 2e-5   # scores come back as float32


def random_id_train(rng, n=300, dim=16, classes=4, dead_dims=0):
    """Clustered non-negative features, a random affine head and its logits."""
    centers = rng.uniform(0, 4, size=(classes, dim))
    labels = np.arange(n) % classes
    # distinct scales per dimension keep the covariance spectrum free of near-ties
    features = np.abs(centers[labels] + rng.normal(size=(n, dim)) * np.geomspace(3, 0.1, dim))
    features[:, dim - dead_dims:] = 0.0
    weight = rng.normal(size=(classes, dim))
    bias = rng.normal(size=classes)
    return IDTrainStats(features.astype(np.float32), features @ weight.T + bias, labels, weight, bias)


def random_test(rng, stats, n=50):
    features = np.abs(rng.normal(1.0, 2.0, size=(n, stats.feature_dim)))
    return features @ stats.head_weight.T + stats.head_bias, features


def score_of(method, stats, logits, features, **params):
    score = make_scores(**{method: params})[method]
    return score.compute(logits, features, score.fit(stats))


# ---------------------------------------------------------------- logit-only scores vs scipy

@pytest.fixture
def logits():
    return np.random.default_rng(0).normal(0, 5, size=(40, 7))


def test_msp_odin_energy_maxlogit_match_scipy(logits):
    np.testing.assert_allclose(SCORES["MSP"].compute(logits), softmax(logits, axis=1).max(1), rtol=RTOL)
    # the default ODIN is the official DFB evaluation's: T = 2, no input perturbation
    np.testing.assert_allclose(SCORES["ODIN"].compute(logits), softmax(logits / 2, axis=1).max(1),
                               rtol=RTOL)
    odin_10 = make_scores(ODIN={"temperature": 10})["ODIN"]
    np.testing.assert_allclose(odin_10.compute(logits), softmax(logits / 10, axis=1).max(1), rtol=RTOL)
    np.testing.assert_allclose(SCORES["Energy"].compute(logits), logsumexp(logits, axis=1), rtol=RTOL)
    energy_3 = make_scores(Energy={"temperature": 3})["Energy"]
    np.testing.assert_allclose(energy_3.compute(logits), 3 * logsumexp(logits / 3, axis=1), rtol=RTOL)
    np.testing.assert_allclose(SCORES["MaxLogit"].compute(logits), logits.max(1), rtol=RTOL)
    for method in ("MSP", "ODIN", "Energy", "MaxLogit", "GEN"):
        assert SCORES[method].compute(logits).dtype == np.float32


@pytest.mark.parametrize("top_m", [100, 3])
def test_gen_matches_direct_formula(logits, top_m):
    gamma = 0.1
    expected = []
    for row in logits:
        p = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        top = sorted(p, reverse=True)[:top_m]
        expected.append(-sum(q ** gamma * (1 - q) ** gamma for q in top))
    got = make_scores(GEN={"top_m": top_m})["GEN"].compute(logits)
    np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_extreme_logits_stay_finite():
    extreme = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    for method in ("MSP", "ODIN", "Energy", "MaxLogit", "GEN"):
        assert np.isfinite(SCORES[method].compute(extreme)).all(), method


# ---------------------------------------------------------------- ODIN perturbation

def test_odin_perturbation_matches_hand_gradient():
    rng = np.random.default_rng(1)
    images = torch.tensor(rng.normal(size=(5, 1, 2, 2)))
    weight = torch.tensor(rng.normal(size=(3, 4)))
    bias = torch.tensor(rng.normal(size=3))
    temperature, epsilon = 2.0, 0.01

    def forward(x):
        return x.flatten(1) @ weight.T + bias

    with torch.no_grad():   # the perturbation must switch gradients on by itself
        perturbed = odin_perturb(forward, images, temperature, epsilon)
    # d/dx log softmax(Ax/T + c/T)_y = (A_y - sum_k p_k A_k) / T with y = argmax
    x = images.flatten(1).numpy()
    a, c = weight.numpy(), bias.numpy()
    p = softmax((x @ a.T + c) / temperature, axis=1)
    y = p.argmax(1)
    gradient = (a[y] - p @ a) / temperature
    expected = x + epsilon * np.sign(gradient)
    np.testing.assert_allclose(perturbed.flatten(1).numpy(), expected, rtol=1e-12)
    assert not perturbed.requires_grad
    # the step raises the temperature-scaled max softmax
    before = softmax(forward(images).numpy() / temperature, axis=1).max(1)
    after = softmax(forward(perturbed).numpy() / temperature, axis=1).max(1)
    assert (after > before).all()


# ---------------------------------------------------------------- feature scores vs direct numpy

@pytest.mark.parametrize("k", [1, 7, 50, 10_000])
def test_knn_matches_sklearn(k):
    rng = np.random.default_rng(2)
    stats = random_id_train(rng)
    logits, features = random_test(rng, stats)
    normalise = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    k_used = min(k, len(stats.features))
    neighbours = NearestNeighbors(n_neighbors=k_used).fit(normalise(stats.features.astype(np.float64)))
    distances, _ = neighbours.kneighbors(normalise(features))
    got = score_of("KNN", stats, logits, features, k=k)
    np.testing.assert_allclose(got, -distances[:, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dead_dims", [0, 3])
def test_mahalanobis_matches_numpy_loop(dead_dims):
    rng = np.random.default_rng(3)
    stats = random_id_train(rng, dead_dims=dead_dims)
    logits, features = random_test(rng, stats)
    x_train = stats.features.astype(np.float64)
    means = np.stack([x_train[stats.labels == c].mean(0) for c in range(stats.num_classes)])
    sigma = sum((x_train[stats.labels == c] - means[c]).T @ (x_train[stats.labels == c] - means[c])
                for c in range(stats.num_classes)) / len(x_train)
    # cutoff D * eps as in scipy.linalg.pinvh: the dead dimensions make sigma singular
    precision = np.linalg.pinv(sigma, rtol=sigma.shape[0] * np.finfo(float).eps, hermitian=True)
    expected = [-min((x - mu) @ precision @ (x - mu) for mu in means) for x in features]
    got = score_of("Mahalanobis", stats, logits, features)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_vim_matches_svd_implementation():
    rng = np.random.default_rng(4)
    stats = random_id_train(rng, n=400, dim=16)
    logits, features = random_test(rng, stats)
    x_train = stats.features.astype(np.float64)
    origin = -np.linalg.pinv(stats.head_weight) @ stats.head_bias
    # principal directions = top right singular vectors of the centred data matrix
    _, _, vt = np.linalg.svd(x_train - origin, full_matrices=False)
    principal = vt[:8]                                       # D // 2 for D < 768

    def residual(x):
        centred = x - origin
        return np.linalg.norm(centred - centred @ principal.T @ principal, axis=1)

    alpha = stats.logits.max(1).sum() / residual(x_train).sum()
    expected = logsumexp(logits, axis=1) - alpha * residual(features)
    got = score_of("ViM", stats, logits, features)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_vim_principal_dim_rule():
    assert [vim_principal_dim(d) for d in (4096, 2048, 2047, 768, 767, 100)] == [1000, 1000, 512, 512, 383, 50]


@pytest.mark.parametrize("percentile", [90, 50])
def test_react_matches_numpy_clip_and_logsumexp(percentile):
    rng = np.random.default_rng(5)
    stats = random_id_train(rng)
    logits, features = random_test(rng, stats)
    # percentile with linear interpolation between order statistics, by hand
    flat = np.sort(stats.features.ravel().astype(np.float64))
    position = percentile / 100 * (flat.size - 1)
    low = int(np.floor(position))
    clip = flat[low] + (position - low) * (flat[min(low + 1, flat.size - 1)] - flat[low])
    clipped_logits = np.minimum(features, clip) @ stats.head_weight.T + stats.head_bias
    got = score_of("ReAct", stats, logits, features, percentile=percentile)
    np.testing.assert_allclose(got, logsumexp(clipped_logits, axis=1), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- direction: ID-like beats OOD-like

def test_every_score_ranks_id_like_inputs_higher():
    """Would fail for any score whose sign were reversed (AUROC near 0 instead of near 1)."""
    rng = np.random.default_rng(6)
    classes, dim = 4, 8   # one active class dimension in 8: above the 90th percentile that ReAct keeps
    weight = np.zeros((classes, dim))
    weight[np.arange(classes), np.arange(classes)] = 3.0
    bias = np.zeros(classes)

    def sample(n, ood):
        labels = rng.integers(0, classes, n)
        features = np.abs(rng.normal(0, 0.3, size=(n, dim)))
        if ood:   # mass outside the class directions, none on them: flat logits, far from the clusters
            features[:, classes:] += rng.uniform(2, 4, size=(n, dim - classes))
        else:     # strong activation of its own class direction: confident logits
            features[np.arange(n), labels] += 5.0
        return features, features @ weight.T + bias, labels

    train_features, train_logits, train_labels = sample(400, ood=False)
    stats = IDTrainStats(train_features, train_logits, train_labels, weight, bias)
    id_features, id_logits, _ = sample(100, ood=False)
    ood_features, ood_logits, _ = sample(100, ood=True)
    results = compute_all_scores(stats, {"id": (id_logits, id_features), "ood": (ood_logits, ood_features)})
    assert list(results) == ["MSP", "ODIN", "Energy", "MaxLogit", "ViM", "KNN", "ReAct", "GEN", "Mahalanobis"]
    for method, by_set in results.items():
        assert auroc(by_set["id"], by_set["ood"]) > 0.95, method


# ---------------------------------------------------------------- registry

def test_registry_flags_and_overrides():
    assert {name for name, s in SCORES.items() if s.needs_fit} == {"ViM", "KNN", "ReAct", "Mahalanobis"}
    assert all(s.name == name for name, s in SCORES.items())
    scores = make_scores(KNN={"k": 3}, ODIN={"temperature": 5.0})
    assert scores["KNN"].k == 3 and scores["ODIN"].temperature == 5.0
    assert SCORES["KNN"].k == 50 and SCORES["ODIN"].hyperparameters() == {"temperature": 2.0, "epsilon": 0.0}
    assert SCORES["GEN"].hyperparameters() == {"gamma": 0.1, "top_m": 100}
    with pytest.raises(ValueError, match="unknown methods.*Foo"):
        make_scores(Foo={})
    with pytest.raises(ValueError, match="KNN has no hyper-parameters.*'q'"):
        make_scores(KNN={"q": 1})
    with pytest.raises(ValueError, match="k must be > 0"):
        make_scores(KNN={"k": 0})


def test_compute_all_scores_matches_single_calls_and_returns_float32():
    rng = np.random.default_rng(7)
    stats = random_id_train(rng)
    sets = {"a": random_test(rng, stats, 20), "b": random_test(rng, stats, 30)}
    scores = make_scores(KNN={"k": 5})
    results = compute_all_scores(stats, sets, methods=["KNN", "MSP"], scores=scores)
    assert list(results) == ["KNN", "MSP"]
    for name, (logits, features) in sets.items():
        assert results["KNN"][name].dtype == np.float32 and results["KNN"][name].shape == (len(logits),)
        np.testing.assert_array_equal(results["KNN"][name], score_of("KNN", stats, logits, features, k=5))
        np.testing.assert_array_equal(results["MSP"][name], SCORES["MSP"].compute(logits))


def test_clear_errors():
    rng = np.random.default_rng(8)
    stats = random_id_train(rng)
    logits, features = random_test(rng, stats)
    with pytest.raises(ValueError, match="KNN: needs test_features"):
        SCORES["KNN"].compute(logits, None, SCORES["KNN"].fit(stats))
    with pytest.raises(ValueError, match="ReAct: needs the state returned by fit"):
        SCORES["ReAct"].compute(logits, features)
    with pytest.raises(ValueError, match="features: expected 16 columns"):
        SCORES["KNN"].compute(logits, features[:, :5], SCORES["KNN"].fit(stats))
    with pytest.raises(ValueError, match="MSP: test_logits: contains NaN"):
        SCORES["MSP"].compute(np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match=r"IDTrainStats.head_bias: expected shape \(4,\)"):
        IDTrainStats(stats.features, stats.logits, stats.labels, stats.head_weight, np.zeros(5))
    with pytest.raises(ValueError, match="IDTrainStats.labels: expected integers in"):
        IDTrainStats(stats.features, stats.logits, stats.labels + 1, stats.head_weight, stats.head_bias)
    with pytest.raises(ValueError, match=r"Mahalanobis: classes \[3\] have no ID-train samples"):
        keep = stats.labels != 3
        SCORES["Mahalanobis"].fit(IDTrainStats(stats.features[keep], stats.logits[keep], stats.labels[keep],
                                               stats.head_weight, stats.head_bias))
    with pytest.raises(ValueError, match="unknown methods"):
        compute_all_scores(stats, {"a": (logits, features)}, methods=["Nope"])
