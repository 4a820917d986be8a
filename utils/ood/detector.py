"""A fitted DFB detector: one foreground score with the statistics eval.py fitted for it, the fusion
eval.py chose, and a decision threshold, stored in one file with the name and sha256 of the dense
(K+1)-class network they belong to.

eval.py --save_detector METHOD writes <logdir>/detector.pt. Here the detector is arrays in, scores
out: `Detector.load(path).score(logits, features)` scores the network's (K+1) logits and pooled
features. Turning image files into those arrays (the network, decoding, the CSV and the maps) is
score.py's stage, utils/scoring/.

Every number comes from the functions eval.py uses (`utils.ood.scores`, `utils.ood.fusion`), so an
image scores here as it scored in eval.py's scores/<method>/<set>.npy. The file holds only tensors,
numbers, strings, lists and dicts, and is read with torch.load(weights_only=True).
"""
import dataclasses
from pathlib import Path

import numpy as np
import torch

from utils.base.io import torch_save_atomic
from utils.ood.fusion import FUSIONS, background_score, fusion_name
from utils.ood.scores import SCORE_CLASSES, KNNState, MahalanobisState, ReActState, ViMState

FORMAT = "dfb-detector"
VERSION = 1
# The base score of `eval.py --save_detector` given alone. ViM: the strongest fused score of the
# demo after Mahalanobis (DFB-ViM 68 / 89 / 86 AUROC on its three OOD sets), a standard choice
# in the literature, and its fitted state (a D x (D - principal dim) subspace) stays small, where
# KNN stores every training feature and Mahalanobis a D x D precision.
DEFAULT_METHOD = "ViM"
# The threshold keeps this fraction of the held-out ID images (the FPR95 operating point)
KEEP_ID = 0.95
FITTED_STATES = {cls.__name__: cls for cls in (ReActState, KNNState, ViMState, MahalanobisState)}


# ---------------------------------------------------------------- the file

def state_to_plain(fitted):
    """A score's fitted state (a dataclass of utils.ood.scores, or None) as plain tensors and numbers.
    numpy fields become CPU tensors and are listed, so that loading gives back numpy arrays."""
    if fitted is None:
        return None
    if type(fitted).__name__ not in FITTED_STATES:
        raise ValueError(f"cannot store a fitted state of type {type(fitted).__name__}; "
                         f"known: {sorted(FITTED_STATES)}")
    fields, numpy_fields = {}, []
    for field in dataclasses.fields(fitted):
        value = getattr(fitted, field.name)
        if isinstance(value, np.ndarray):
            numpy_fields.append(field.name)
            value = torch.from_numpy(np.ascontiguousarray(value))
        elif torch.is_tensor(value):
            value = value.detach().cpu()
        fields[field.name] = value
    return {"type": type(fitted).__name__, "fields": fields, "numpy_fields": numpy_fields}


def state_from_plain(plain, device):
    """Inverse of state_to_plain, with the tensors on `device` (where the score runs)."""
    if plain is None:
        return None
    values = {name: value.numpy() if name in plain["numpy_fields"] else
              value.to(device) if torch.is_tensor(value) else value
              for name, value in plain["fields"].items()}
    return FITTED_STATES[plain["type"]](**values)


def keep_threshold(id_scores, keep=KEEP_ID):
    """The largest t with mean(id_scores >= t) >= keep: at most floor(n (1 - keep)) images fall below."""
    ordered = np.sort(np.asarray(id_scores, dtype=np.float32))
    if ordered.size == 0:
        raise ValueError("keep_threshold: no held-out ID scores")
    below = int(np.floor(ordered.size * (1.0 - keep) + 1e-9))  # 1e-9: n * 0.05 may round under an integer
    return float(ordered[below])


def save_detector(path, *, model_path, checkpoint_digest, model, resolution, half_stride, classes, amp,
                  score, fitted, fitted_images, mode, choice, heldout_fused, heldout_images, background_sign=1,
                  tta="none"):
    """Write the detector file (atomically).

    model: the network (its name and head size are stored); score: the utils.ood.scores Score object
    and fitted: its state from score.fit on the ID training rows; mode / choice: the fusion mode and
    its (sign, temperature, validation AUROC) as eval.py chose them; heldout_fused: the fused scores
    of the held-out ID images that chose it (float32, as eval.py computed them), which set the
    threshold; heldout_images: fusion_selection.json's record of those images; background_sign: the
    direction of the background score (bg_score) that eval.py chose on validation data; tta: eval.py's
    --tta, the test-time augmentation every array above was extracted with, which score.py applies too.
    """
    threshold = keep_threshold(heldout_fused)
    spec = {
        "format": FORMAT, "version": VERSION,
        "checkpoint": {"path": str(Path(model_path).resolve()), "sha256": checkpoint_digest},
        "model": {"name": model.model_name, "head_size": int(model.head_size), "resolution": int(resolution),
                  "half_stride": bool(half_stride), "classes": list(classes)},
        "amp": amp, "tta": tta,
        "score": {"method": score.name, "hyperparameters": score.hyperparameters(),
                  "fitted": state_to_plain(fitted), "fitted_images": int(fitted_images)},
        "fusion": {"name": fusion_name(score.name), "mode": mode, "sign": int(choice[0]),
                   "temperature": float(choice[1]), "validation_auroc": float(choice[2]),
                   "background_sign": int(background_sign)},
        "threshold": {"value": threshold, "keep_id": KEEP_ID,
                      "kept_fraction": float(np.mean(np.asarray(heldout_fused) >= threshold)),
                      "images": {key: heldout_images[key] for key in ("source", "split", "count", "digest")}},
    }
    torch_save_atomic(spec, path)
    return spec


def read_detector(path):
    """The detector file's contents, checked to be one written by save_detector."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector file {path} does not exist (eval.py --save_detector writes "
                                f"<logdir>/detector.pt)")
    try:
        spec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, truncated, or holding objects beyond plain data
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"{path} is not a readable detector file (torch.load: {reason}); expected the "
                         f"detector.pt written by eval.py --save_detector") from error
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{path} is not a detector file (no format '{FORMAT}'); expected the detector.pt "
                         f"written by eval.py --save_detector")
    if spec.get("version") != VERSION:
        raise ValueError(f"detector {path} has format version {spec.get('version')}; this code reads version "
                         f"{VERSION}: write it again with this code's eval.py --save_detector")
    return spec


# ---------------------------------------------------------------- the detector

class Detector:
    """A loaded detector: the fitted score, the fusion and the threshold, applied to arrays."""

    def __init__(self, spec, device="cpu"):
        self.spec, self.device = spec, device
        self.classes = spec["model"]["classes"]
        self.num_classes = len(self.classes)
        self.method = spec["score"]["method"]
        self.score_method = SCORE_CLASSES[self.method](**spec["score"]["hyperparameters"])
        self.fitted = state_from_plain(spec["score"]["fitted"], device)
        self.fusion = spec["fusion"]
        self.threshold = spec["threshold"]["value"]

    @classmethod
    def load(cls, path, device="cpu"):
        """The detector of file `path`, its fitted tensors on `device` (where the scores run)."""
        return cls(read_detector(path), device)

    def describe(self):
        fusion = self.fusion
        return (f"{fusion['name']} ({fusion['mode']} fusion, sign {fusion['sign']:+d}, T {fusion['temperature']:.4g}), "
                f"threshold {self.threshold:.6g} (keeps {100 * KEEP_ID:.0f} % of "
                f"{self.spec['threshold']['images']['count']} held-out ID images), {self.num_classes} classes")

    def score(self, logits, features):
        """{column: array [B]} from the network's logits [B, K+1] and pooled features [B, D] (float32
        numpy, as eval.py extracts them): score (the fused DFB score), fg_score, bg_score, is_ood,
        pred_class (names) and pred_prob."""
        k = self.num_classes
        if logits.ndim != 2 or logits.shape[1] != k + 1 or features.ndim != 2 or len(features) != len(logits):
            raise ValueError(f"expected logits [B, {k + 1}] and features [B, D] of one batch, got "
                             f"{tuple(logits.shape)} and {tuple(features.shape)}")
        fg = self.score_method.compute(logits[:, :k], features, self.fitted)
        fused = FUSIONS[self.fusion["mode"]](fg, logits, self.fusion["temperature"], self.fusion["sign"])
        fused = fused.astype(np.float32)  # as eval.py stores it, so the threshold compares like for like
        prob, pred = torch.from_numpy(logits[:, :k]).softmax(dim=1).max(dim=1)
        # detectors written before the background's direction was chosen on validation data used -z_bg
        background = background_score(logits, self.fusion.get("background_sign", 1))
        return {"score": fused, "fg_score": fg, "bg_score": background, "is_ood": fused < self.threshold,
                "pred_class": np.array([self.classes[i] for i in pred.tolist()]), "pred_prob": prob.numpy()}
