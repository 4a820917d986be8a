"""Post-hoc OOD scores of a K-class classifier: higher = more in-distribution (ID).

Every score is a pure function of arrays: test logits z [N, K], test (pooled,
penultimate) features h [N, D] and, for the scores that need it, statistics of the
ID training set (`IDTrainStats`). numpy in, float32 numpy out. The heavy scores (KNN,
ViM, Mahalanobis) run in torch in row chunks on a chosen `device`, so an evaluation
can put them on the GPU; their fitted state lives on that device.

For a DFB network the arrays are its K foreground logits, the pooled feature and the
K foreground rows of its (K+1)-class head; the background logit is `utils.ood.fusion`'s job.

Registry: `SCORES` maps each method name to a `Score` with `.name`, `.needs_fit`,
`.fit(id_train, device)` and `.compute(test_logits, test_features, fitted)`;
`make_scores(KNN=dict(k=100), ...)` changes hyper-parameters; `compute_all_scores`
fits each method once and scores every test set.
"""
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.special import log_softmax, logsumexp, softmax

# Elements of the largest temporary matrix of a chunked computation (2**25 float32 = 128 MiB)
CHUNK_ELEMENTS = 2 ** 25


# ---------------------------------------------------------------- input checking

def _check_matrix(array, name, columns=None):
    """float64 [N, C] array with finite values; clear errors name the argument."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [N, C], got shape {array.shape}")
    if columns is not None and array.shape[1] != columns:
        raise ValueError(f"{name}: expected {columns} columns, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


@dataclass(frozen=True)
class IDTrainStats:
    """What the fitted scores learn from the ID training set.

    features [N, D] pooled penultimate features; logits [N, K]; labels [N] in [0, K);
    head_weight [K, D] and head_bias [K] of the affine head with logits = h W^T + b.
    """
    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    head_weight: np.ndarray
    head_bias: np.ndarray

    def __post_init__(self):
        features = np.asarray(self.features)
        logits = np.asarray(self.logits)
        labels = np.asarray(self.labels)
        weight = np.asarray(self.head_weight)
        bias = np.asarray(self.head_bias)
        if features.ndim != 2 or logits.ndim != 2 or weight.ndim != 2:
            raise ValueError("IDTrainStats: features, logits and head_weight must be 2-D, got shapes "
                             f"{features.shape}, {logits.shape}, {weight.shape}")
        n, dim = features.shape
        classes = weight.shape[0]
        expected = {"logits": (n, classes), "labels": (n,), "head_weight": (classes, dim),
                    "head_bias": (classes,)}
        actual = {"logits": logits.shape, "labels": labels.shape, "head_weight": weight.shape,
                  "head_bias": bias.shape}
        for key, shape in expected.items():
            if actual[key] != shape:
                raise ValueError(f"IDTrainStats.{key}: expected shape {shape} (N={n}, K={classes}, "
                                 f"D={dim}), got {actual[key]}")
        if n == 0:
            raise ValueError("IDTrainStats: the ID training set is empty")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= classes:
            raise ValueError(f"IDTrainStats.labels: expected integers in [0, {classes}), got dtype "
                             f"{labels.dtype}, range [{labels.min()}, {labels.max()}]")
        for key, value in [("features", features), ("logits", logits), ("head_weight", weight),
                           ("head_bias", bias)]:
            if not np.isfinite(value).all():
                raise ValueError(f"IDTrainStats.{key}: contains NaN or infinite values")
        for key, value in [("features", features), ("logits", logits), ("labels", labels),
                           ("head_weight", weight), ("head_bias", bias)]:
            object.__setattr__(self, key, value)

    @property
    def num_classes(self) -> int:
        return self.head_weight.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[1]


def _row_chunks(rows, columns):
    """Slices of at most CHUNK_ELEMENTS // columns rows covering range(rows)."""
    step = max(1, CHUNK_ELEMENTS // max(columns, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _to_device(array, device, dtype):
    return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=device)


# ---------------------------------------------------------------- logit-only scores

def msp(logits: ArrayLike) -> np.ndarray:
    """MSP (Hendrycks & Gimpel, ICLR 2017): max_k softmax(z)_k."""
    return softmax(_check_matrix(logits, "logits"), axis=1).max(axis=1).astype(np.float32)


def odin(logits: ArrayLike, temperature: float = 2.0) -> np.ndarray:
    """ODIN (Liang et al., ICLR 2018): max_k softmax(z / T)_k. T = 2 by default, the official DFB
    evaluation's setting (the original ODIN: T = 1000 with input perturbation 0.0014).

    The input-perturbation half of ODIN needs the model: feed the logits of
    `odin_perturb(...)`'s output here. With epsilon = 0 this is temperature scaling only.
    """
    return msp(_check_matrix(logits, "logits") / temperature)


def odin_perturb(forward_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                 temperature: float = 1000.0, epsilon: float = 0.0014) -> torch.Tensor:
    """ODIN input preprocessing: x~ = x - eps * sign(-grad_x log max_k softmax(f(x) / T)_k).

    `forward_fn` maps a batch of images (torch, any device) to logits [N, K]; the step
    raises the temperature-scaled max softmax. Each sample's gradient only depends on
    that sample (the model must be in eval mode, no batch statistics), so one backward
    pass over the batch sum serves all samples. `epsilon` is in the units of `images`:
    the ODIN paper's eps is in [0, 1] pixel units, i.e. 2 * eps for inputs normalised
    with std 0.5. Returns the perturbed images, detached.
    """
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise ValueError(f"odin_perturb: images must be a floating-point torch tensor, got {type(images)}")
    with torch.enable_grad():
        inputs = images.detach().clone().requires_grad_(True)
        logits = forward_fn(inputs)
        if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
            raise ValueError(f"odin_perturb: forward_fn must return logits [N, K] for N = "
                             f"{images.shape[0]} images, got shape {tuple(logits.shape)}")
        log_max_softmax = torch.log_softmax(logits / temperature, dim=1).max(dim=1).values
        (gradient,) = torch.autograd.grad(log_max_softmax.sum(), inputs)
    return (images.detach() - epsilon * torch.sign(-gradient)).detach()


def energy(logits: ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Energy score (Liu et al., NeurIPS 2020): T * logsumexp_k(z_k / T) (the negative free energy)."""
    logits = _check_matrix(logits, "logits")
    return (temperature * logsumexp(logits / temperature, axis=1)).astype(np.float32)


def max_logit(logits: ArrayLike) -> np.ndarray:
    """MaxLogit (Hendrycks et al., ICML 2022): max_k z_k."""
    return _check_matrix(logits, "logits").max(axis=1).astype(np.float32)


def gen(logits: ArrayLike, gamma: float = 0.1, top_m: int = 100) -> np.ndarray:
    """GEN (Liu et al., CVPR 2023): -sum_{j in top M} p_j^gamma (1 - p_j)^gamma, p = softmax(z).

    The sum runs over the M = min(top_m, K) largest probabilities; a confident (peaked)
    prediction has a small generalised entropy, so -G is high for ID inputs.
    """
    probabilities = np.exp(log_softmax(_check_matrix(logits, "logits"), axis=1))
    m = min(top_m, probabilities.shape[1])
    top = -np.partition(-probabilities, m - 1, axis=1)[:, :m]
    return (-np.sum(top ** gamma * (1.0 - top) ** gamma, axis=1)).astype(np.float32)


# ---------------------------------------------------------------- ReAct

@dataclass(frozen=True)
class ReActState:
    clip: float               # activation threshold c
    head_weight: np.ndarray   # [K, D]
    head_bias: np.ndarray     # [K]


def react_fit(id_train: IDTrainStats, percentile: float = 90.0) -> ReActState:
    """ReAct threshold c = the p-th percentile of all ID-train feature activations."""
    clip = float(np.percentile(id_train.features, percentile))
    return ReActState(clip, id_train.head_weight.astype(np.float64), id_train.head_bias.astype(np.float64))


def react(features: ArrayLike, state: ReActState) -> np.ndarray:
    """ReAct (Sun et al., NeurIPS 2021): energy logsumexp_k(W min(h, c) + b)_k."""
    features = _check_matrix(features, "features", columns=state.head_weight.shape[1])
    clipped = np.minimum(features, state.clip)
    return energy(clipped @ state.head_weight.T + state.head_bias)


# ---------------------------------------------------------------- KNN

@dataclass(frozen=True)
class KNNState:
    train: torch.Tensor   # [N, D] L2-normalised ID-train features, float32, on the scoring device


def knn_fit(id_train: IDTrainStats, device: str | torch.device = "cpu") -> KNNState:
    train = _to_device(id_train.features, device, torch.float32)
    return KNNState(torch.nn.functional.normalize(train, dim=1))


def knn(features: ArrayLike, state: KNNState, k: int = 50) -> np.ndarray:
    """KNN (Sun et al., ICML 2022): -|| x/|x| - t_(k) ||, t_(k) the k-th nearest normalised ID-train feature.

    k is clamped to the training-set size. Squared distances come from
    |a|^2 + |b|^2 - 2 a.b in float32 on the state's device (as with FAISS in the paper).
    """
    train = state.train
    features = _check_matrix(features, "features", columns=train.shape[1])
    k = min(k, train.shape[0])
    train_sq = (train * train).sum(dim=1)
    scores = np.empty(features.shape[0], dtype=np.float32)
    for rows in _row_chunks(features.shape[0], train.shape[0]):
        test = torch.nn.functional.normalize(_to_device(features[rows], train.device, torch.float32), dim=1)
        squared = (test * test).sum(dim=1, keepdim=True) + train_sq - 2.0 * test @ train.T
        kth = torch.kthvalue(squared, k, dim=1).values
        scores[rows] = (-kth.clamp_min(0.0).sqrt()).cpu().numpy()
    return scores


# ---------------------------------------------------------------- ViM

def vim_principal_dim(feature_dim: int) -> int:
    """ViM's principal-subspace size: 1000 for D >= 2048, 512 for D >= 768, else D // 2."""
    if feature_dim >= 2048:
        return 1000
    if feature_dim >= 768:
        return 512
    return feature_dim // 2


@dataclass(frozen=True)
class ViMState:
    origin: torch.Tensor      # [D] u = -W^+ b
    null_space: torch.Tensor  # [D, D - dim] eigenvectors of the smallest eigenvalues
    alpha: float              # sum of max train logits / sum of train residual norms


def _residual_norms(features, origin, null_space):
    """||(h - u) P_null||, chunked, on the device of `origin`."""
    norms = np.empty(features.shape[0], dtype=np.float64)
    for rows in _row_chunks(features.shape[0], features.shape[1]):
        centered = _to_device(features[rows], origin.device, torch.float64) - origin
        norms[rows] = torch.linalg.vector_norm(centered @ null_space, dim=1).cpu().numpy()
    return norms


def vim_fit(id_train: IDTrainStats, device: str | torch.device = "cpu", principal_dim: int | None = None) -> ViMState:
    """Origin u = -W^+ b; principal subspace of the ID-train features centred at u.

    The principal subspace is spanned by the eigenvectors of the `principal_dim` largest
    eigenvalues of (1/N) sum (h - u)(h - u)^T; the residual is the projection onto the rest.
    """
    dim = id_train.feature_dim
    principal_dim = vim_principal_dim(dim) if principal_dim is None else principal_dim
    if not 0 <= principal_dim < dim:
        raise ValueError(f"ViM: principal_dim must be in [0, {dim}) for {dim}-dim features, got {principal_dim}")
    weight = _to_device(id_train.head_weight, device, torch.float64)
    bias = _to_device(id_train.head_bias, device, torch.float64)
    origin = -torch.linalg.pinv(weight) @ bias
    covariance = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    for rows in _row_chunks(len(id_train.features), dim):
        centered = _to_device(id_train.features[rows], device, torch.float64) - origin
        covariance += centered.T @ centered
    covariance /= len(id_train.features)
    _, eigenvectors = torch.linalg.eigh(covariance)   # ascending eigenvalues
    null_space = eigenvectors[:, : dim - principal_dim].contiguous()
    train_residual = _residual_norms(id_train.features, origin, null_space)
    if train_residual.sum() <= 0:
        raise ValueError("ViM: the ID-train features have no residual outside the principal subspace; "
                         "lower principal_dim")
    alpha = float(id_train.logits.max(axis=1).sum() / train_residual.sum())
    return ViMState(origin, null_space, alpha)


def vim(logits: ArrayLike, features: ArrayLike, state: ViMState) -> np.ndarray:
    """ViM (Wang et al., CVPR 2022): logsumexp(z) - alpha ||x_res|| (energy minus virtual logit)."""
    logits = _check_matrix(logits, "logits")
    features = _check_matrix(features, "features", columns=state.origin.shape[0])
    residual = _residual_norms(features, state.origin, state.null_space)
    return (logsumexp(logits, axis=1) - state.alpha * residual).astype(np.float32)


# ---------------------------------------------------------------- Mahalanobis

@dataclass(frozen=True)
class MahalanobisState:
    means: torch.Tensor      # [K, D] class means
    precision: torch.Tensor  # [D, D] pseudo-inverse of the tied covariance


def mahalanobis_fit(id_train: IDTrainStats, device: str | torch.device = "cpu") -> MahalanobisState:
    """Class means mu_c and the tied covariance (1/N) sum_i (h_i - mu_(y_i))(h_i - mu_(y_i))^T.

    The precision is its pseudo-inverse with the relative cutoff D * eps (that of
    scipy.linalg.pinvh, which sklearn's EmpiricalCovariance uses): dead feature
    dimensions make the covariance singular.
    """
    classes, dim = id_train.num_classes, id_train.feature_dim
    counts = np.bincount(id_train.labels, minlength=classes)
    if (counts == 0).any():
        raise ValueError(f"Mahalanobis: classes {np.flatnonzero(counts == 0).tolist()} have no ID-train samples")
    labels = torch.as_tensor(id_train.labels, dtype=torch.long, device=device)
    sums = torch.zeros(classes, dim, dtype=torch.float64, device=device)
    for rows in _row_chunks(len(labels), dim):
        sums.index_add_(0, labels[rows], _to_device(id_train.features[rows], device, torch.float64))
    means = sums / _to_device(counts, device, torch.float64)[:, None]
    covariance = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    for rows in _row_chunks(len(labels), dim):
        centered = _to_device(id_train.features[rows], device, torch.float64) - means[labels[rows]]
        covariance += centered.T @ centered
    covariance /= len(labels)
    precision = torch.linalg.pinv(covariance, hermitian=True)
    return MahalanobisState(means, precision)


def mahalanobis(features: ArrayLike, state: MahalanobisState) -> np.ndarray:
    """Mahalanobis (Lee et al., NeurIPS 2018; features only, no input preprocessing):
    -min_c (h - mu_c)^T Sigma^+ (h - mu_c)."""
    means, precision = state.means, state.precision
    features = _check_matrix(features, "features", columns=means.shape[1])
    mean_terms = ((means @ precision) * means).sum(dim=1)
    scores = np.empty(features.shape[0], dtype=np.float32)
    for rows in _row_chunks(features.shape[0], max(means.shape[1], means.shape[0])):
        x = _to_device(features[rows], means.device, torch.float64)
        x_precision = x @ precision
        distances = ((x_precision * x).sum(dim=1, keepdim=True) - 2.0 * x_precision @ means.T
                     + mean_terms)
        scores[rows] = (-distances.min(dim=1).values).cpu().numpy()
    return scores


# ---------------------------------------------------------------- uniform registry

class Score:
    """One OOD score: hyper-parameters are the dataclass fields of a subclass.

    fit(id_train, device) -> fitted state or None; compute(test_logits, test_features,
    fitted) -> float32 [N], higher = more ID.
    """
    name: ClassVar[str]
    needs_fit: ClassVar[bool] = False
    uses_features: ClassVar[bool] = False

    def fit(self, id_train: IDTrainStats, device: str | torch.device = "cpu") -> Any:
        return None

    def compute(self, test_logits: ArrayLike, test_features: ArrayLike | None = None, fitted: Any = None) -> np.ndarray:
        logits = _check_matrix(test_logits, f"{self.name}: test_logits")
        features = None
        if self.uses_features:
            if test_features is None:
                raise ValueError(f"{self.name}: needs test_features [N, D], got None")
            features = _check_matrix(test_features, f"{self.name}: test_features")
            if len(features) != len(logits):
                raise ValueError(f"{self.name}: test_logits has {len(logits)} rows but "
                                 f"test_features has {len(features)}")
        if self.needs_fit and fitted is None:
            raise ValueError(f"{self.name}: needs the state returned by fit(id_train); got None")
        return self._score(logits, features, fitted)

    def hyperparameters(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _score(self, logits, features, fitted):
        raise NotImplementedError


def _require_positive(score, **values):
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{score.name}: {key} must be > 0, got {value}")


@dataclass(frozen=True)
class MSP(Score):
    name: ClassVar[str] = "MSP"

    def _score(self, logits, features, fitted):
        return msp(logits)


@dataclass(frozen=True)
class ODIN(Score):
    """`epsilon` is not used by compute(): it is the magnitude the caller passes to odin_perturb.
    Defaults: the official DFB evaluation's "ODIN" (T = 2, no perturbation)."""
    name: ClassVar[str] = "ODIN"
    temperature: float = 2.0
    epsilon: float = 0.0

    def __post_init__(self):
        _require_positive(self, temperature=self.temperature)
        if self.epsilon < 0:
            raise ValueError(f"ODIN: epsilon must be >= 0, got {self.epsilon}")

    def _score(self, logits, features, fitted):
        return odin(logits, self.temperature)


@dataclass(frozen=True)
class Energy(Score):
    name: ClassVar[str] = "Energy"
    temperature: float = 1.0

    def __post_init__(self):
        _require_positive(self, temperature=self.temperature)

    def _score(self, logits, features, fitted):
        return energy(logits, self.temperature)


@dataclass(frozen=True)
class MaxLogit(Score):
    name: ClassVar[str] = "MaxLogit"

    def _score(self, logits, features, fitted):
        return max_logit(logits)


@dataclass(frozen=True)
class GEN(Score):
    name: ClassVar[str] = "GEN"
    gamma: float = 0.1
    top_m: int = 100

    def __post_init__(self):
        _require_positive(self, gamma=self.gamma, top_m=self.top_m)

    def _score(self, logits, features, fitted):
        return gen(logits, self.gamma, self.top_m)


@dataclass(frozen=True)
class ReAct(Score):
    name: ClassVar[str] = "ReAct"
    needs_fit: ClassVar[bool] = True
    uses_features: ClassVar[bool] = True
    percentile: float = 90.0

    def __post_init__(self):
        if not 0 < self.percentile <= 100:
            raise ValueError(f"ReAct: percentile must be in (0, 100], got {self.percentile}")

    def fit(self, id_train, device="cpu"):
        return react_fit(id_train, self.percentile)

    def _score(self, logits, features, fitted):
        return react(features, fitted)


@dataclass(frozen=True)
class KNN(Score):
    name: ClassVar[str] = "KNN"
    needs_fit: ClassVar[bool] = True
    uses_features: ClassVar[bool] = True
    k: int = 50

    def __post_init__(self):
        _require_positive(self, k=self.k)

    def fit(self, id_train, device="cpu"):
        return knn_fit(id_train, device)

    def _score(self, logits, features, fitted):
        return knn(features, fitted, self.k)


@dataclass(frozen=True)
class ViM(Score):
    """principal_dim None = the paper's rule (`vim_principal_dim`)."""
    name: ClassVar[str] = "ViM"
    needs_fit: ClassVar[bool] = True
    uses_features: ClassVar[bool] = True
    principal_dim: int | None = None

    def fit(self, id_train, device="cpu"):
        return vim_fit(id_train, device, self.principal_dim)

    def _score(self, logits, features, fitted):
        return vim(logits, features, fitted)


@dataclass(frozen=True)
class Mahalanobis(Score):
    name: ClassVar[str] = "Mahalanobis"
    needs_fit: ClassVar[bool] = True
    uses_features: ClassVar[bool] = True

    def fit(self, id_train, device="cpu"):
        return mahalanobis_fit(id_train, device)

    def _score(self, logits, features, fitted):
        return mahalanobis(features, fitted)


SCORE_CLASSES = {cls.name: cls for cls in (MSP, ODIN, Energy, MaxLogit, ViM, KNN, ReAct, GEN, Mahalanobis)}


def make_scores(**overrides: Mapping[str, Any]) -> dict[str, Score]:
    """The registry {name: Score}, with hyper-parameters changed per method.

    Example: make_scores(KNN=dict(k=100), ODIN=dict(temperature=500), Energy=dict(temperature=2)).
    """
    unknown = set(overrides) - set(SCORE_CLASSES)
    if unknown:
        raise ValueError(f"make_scores: unknown methods {sorted(unknown)}; known: {list(SCORE_CLASSES)}")
    scores = {}
    for name, cls in SCORE_CLASSES.items():
        params = dict(overrides.get(name, {}))
        allowed = [field.name for field in dataclasses.fields(cls)]
        bad = set(params) - set(allowed)
        if bad:
            raise ValueError(f"make_scores: {name} has no hyper-parameters {sorted(bad)}; it has {allowed}")
        scores[name] = cls(**params)
    return scores


SCORES = make_scores()


def compute_all_scores(id_train: IDTrainStats, test_sets: Mapping[str, tuple[ArrayLike, ArrayLike | None]],
                       device: str | torch.device = "cpu", methods: Iterable[str] | None = None,
                       scores: Mapping[str, Score] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{method: {set name: float32 [N] scores}}, fitting each method once on `id_train`.

    test_sets: {name: (logits [N, K], features [N, D] or None)}; methods: names to run
    (default: all of `scores`); scores: a registry from make_scores (default SCORES).
    """
    scores = SCORES if scores is None else scores
    methods = list(scores) if methods is None else list(methods)
    unknown = [method for method in methods if method not in scores]
    if unknown:
        raise ValueError(f"compute_all_scores: unknown methods {unknown}; known: {list(scores)}")
    for name, pair in test_sets.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"compute_all_scores: test_sets[{name!r}] must be a (logits, features) tuple")
    results = {}
    for method in methods:
        score = scores[method]
        fitted = score.fit(id_train, device)
        results[method] = {name: score.compute(logits, features, fitted)
                           for name, (logits, features) in test_sets.items()}
    return results
