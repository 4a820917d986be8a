"""Tests of the embedded synthetic benchmark (datasets/synthetic.py, make_demo_data.py)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import make_demo_data
from datasets import synthetic as S
from datasets.masks import IGNORE_INDEX

K = S.NUM_CLASSES


def _files(root):
    """Relative path -> bytes of every file under root."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path):
    return np.asarray(Image.open(path))


def _small(root, seed=0, **overrides):
    params = dict(seed=seed, size=32, n_train_per_class=3, n_test_per_class=2, n_ood=4, progress=False)
    params.update(overrides)
    return S.generate_benchmark(root, **params)


@pytest.fixture(scope="module")
def learnable_set(tmp_path_factory):
    """A benchmark big enough to fit a linear classifier, read back from the PNG files."""
    result = S.generate_benchmark(tmp_path_factory.mktemp("bench"), seed=3, n_train_per_class=80,
                                  n_test_per_class=40, n_ood=120, progress=False)

    def read(folder):
        paths = sorted(Path(folder).glob("*/*.png"))
        labels = np.array([S.CLASS_NAMES.index(p.parent.name) for p in paths]) \
            if Path(folder).parent.name == S.ID_NAME else None
        return np.stack([_load(p) for p in paths]), labels

    return result, read


# ------------------------------------------------------------------ geometry / rendering

def test_shape_areas_match_closed_forms():
    w = 0.3
    expected = {
        "disc": math.pi,
        "ring": math.pi * (1 - 0.55 ** 2),
        "square": (2 * 0.72) ** 2,
        "triangle": 3 * math.sqrt(3) / 4,  # equilateral, circumradius 1
        "cross": 8 * math.sqrt(1 - w * w) * w - 4 * w * w,  # two bars minus their overlap
        "star": 5 * 0.45 * math.sin(math.pi / 5),  # ten triangles (origin, tip, notch)
        "hexagon": 3 * math.sqrt(3) / 2,
    }
    for name, area in expected.items():
        measured, radius = S._shape_extent(name)
        assert measured == pytest.approx(area, rel=0.01), name
        assert 0.95 <= radius <= 1.02, name  # circumradius about 1: sizes are comparable


@pytest.mark.parametrize("k", range(K))
def test_id_sample_mask_is_the_object(k):
    for i in range(8):
        image, mask = S.render_id_sample(S.image_rng(0, "train", k, i), k, size=32)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert mask.shape == (32, 32) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {k, K}
        assert 0.10 <= (mask == k).mean() <= 0.60
        # The mask sits on the object: its colour stands out from the pixels just outside it.
        inside = mask == k
        rim = ndimage.binary_dilation(inside, iterations=2) & ~ndimage.binary_dilation(inside)
        contrast = np.linalg.norm(image[inside].mean(0) - image[rim].mean(0))
        assert contrast > 40, (k, i, contrast)


def test_size_is_configurable():
    image, mask = S.render_id_sample(S.image_rng(0, "train", 1, 0), 1, size=48)
    assert image.shape == (48, 48, 3) and mask.shape == (48, 48)


def test_antialiased_edges():
    """Supersampling leaves intermediate colours along the outline of a disc."""
    image, mask = S.render_id_sample(S.image_rng(0, "train", 1, 0), 1, size=32)
    edge = ndimage.binary_dilation(mask == 1) & ~ndimage.binary_erosion(mask == 1)
    inside = ndimage.binary_erosion(mask == 1, iterations=2)
    outside = ~ndimage.binary_dilation(mask == 1, iterations=2)
    object_colour, behind = image[inside].mean(0), image[outside].mean(0)
    # Fraction along object - background of each edge pixel; blends lie strictly between.
    axis = object_colour - behind
    t = (image[edge] - behind) @ axis / (axis @ axis)
    assert ((t > 0.15) & (t < 0.85)).mean() > 0.2


def test_ood_masks():
    for i in range(10):
        for name in ("SynthNewBackgrounds", "SynthClutter"):
            image, mask = S.render_ood_sample(S.image_rng(0, name, 0, i), name, size=32)
            assert image.shape == (32, 32, 3)
            assert (mask == K).all(), name
        _, mask = S.render_ood_sample(S.image_rng(0, "SynthNewObjects", 0, i), "SynthNewObjects", 32)
        assert set(np.unique(mask)) == {K, IGNORE_INDEX}
        assert 0.10 <= (mask == IGNORE_INDEX).mean() <= 0.60


def test_bad_arguments_are_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="class_index"):
        S.render_id_sample(rng, K, 32)
    with pytest.raises(ValueError, match="size"):
        S.render_id_sample(rng, 0, 8)
    with pytest.raises(ValueError, match="ood_set"):
        S.render_ood_sample(rng, "Textures", 32)
    with pytest.raises(ValueError, match="n_ood"):
        S.generate_benchmark("unused", n_ood=0)
    with pytest.raises(ValueError, match="seed"):
        S.generate_benchmark("unused", seed=-1)


# ------------------------------------------------------------------------- files

def test_layout_and_counts(tmp_path):
    result = _small(tmp_path)
    assert result["reused"] is False
    assert sorted(S.CLASS_NAMES) == list(S.CLASS_NAMES)
    for split, n in (("train", 3), ("test", 2)):
        images = Path(result[f"id_{split}"])
        masks = Path(result[f"gtmask_{split}"])
        assert images == tmp_path / "synthetic" / split
        assert masks == tmp_path / "synthetic" / f"{split}_gtmask"
        assert sorted(p.name for p in images.iterdir()) == list(S.CLASS_NAMES)
        for k, name in enumerate(S.CLASS_NAMES):
            stems = sorted(p.name for p in (images / name).iterdir())
            assert stems == [f"{i:05d}.png" for i in range(n)]
            assert sorted(p.name for p in (masks / name).iterdir()) == stems
            for stem in stems:
                image, mask = _load(images / name / stem), _load(masks / name / stem)
                assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
                assert set(np.unique(mask)) == {k, K}
    for name, folder in S.OOD_SETS.items():
        assert result["ood"][name] == tmp_path / name / "test"
        assert sorted(p.name for p in (tmp_path / name / "test").iterdir()) == [folder]
        assert len(list((tmp_path / name / "test" / folder).glob("*.png"))) == 4
    assert result["counts"] == {"id_train": 18, "id_test": 12, "SynthNewObjects": 4,
                                "SynthNewBackgrounds": 4, "SynthClutter": 4}
    assert not list(tmp_path.rglob(".*.tmp*"))  # no temporary files left behind


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    for folder, seed in (("a", 5), ("b", 5), ("c", 6)):
        _small(tmp_path / folder, seed=seed)
    first, second, other = (_files(tmp_path / folder) for folder in "abc")
    assert first == second
    assert first.keys() == other.keys()
    pngs = [k for k in first if k.endswith(".png") and "gtmask" not in k]
    assert sum(first[k] != other[k] for k in pngs) == len(pngs)


def test_images_do_not_depend_on_the_other_counts(tmp_path):
    """Per-image seeds: the first images are the same whatever else is generated."""
    _small(tmp_path / "few", n_train_per_class=2, n_ood=1)
    _small(tmp_path / "many", n_train_per_class=5, n_ood=3)
    few, many = _files(tmp_path / "few"), _files(tmp_path / "many")
    shared = [k for k in few if k.endswith(".png")]
    assert len(shared) == 6 * 2 * 2 + 6 * 2 * 2 + 3  # train + test images and masks, OOD
    assert all(few[k] == many[k] for k in shared)


def test_marker_skips_and_mismatch_regenerates(tmp_path):
    _small(tmp_path)
    marker = json.loads((tmp_path / "synthetic" / ".complete").read_text())
    assert marker["seed"] == 0 and marker["n_train_per_class"] == 3 and marker["size"] == 32
    probe = tmp_path / "synthetic" / "train" / "disc" / "00000.png"
    probe.unlink()
    assert _small(tmp_path)["reused"] is True
    assert not probe.exists()  # skipped: nothing was rewritten

    result = _small(tmp_path, n_train_per_class=2)
    assert result["reused"] is False and probe.exists()
    assert sorted(p.name for p in probe.parent.iterdir()) == ["00000.png", "00001.png"]  # stale 00002 gone
    assert json.loads((tmp_path / "synthetic" / ".complete").read_text())["n_train_per_class"] == 2


def test_cli(tmp_path, capsys):
    make_demo_data.main(["--out", str(tmp_path), "--train_per_class", "2", "--test_per_class", "1",
                         "--ood", "2", "--quiet"])
    out = capsys.readouterr().out
    assert "id_train" in out and "SynthClutter" in out and " 12 images" in out
    assert len(list((tmp_path / "synthetic" / "train").glob("*/*.png"))) == 12
    with pytest.raises(SystemExit, match="size"):
        make_demo_data.main(["--out", str(tmp_path), "--size", "4"])


# ---------------------------------------------------------- the benchmark measures what it should

def _shape_features(images):
    """Rotation- and translation-invariant shape cues: the Fourier magnitudes of the
    edge-orientation histogram (n-fold symmetry) and the radial profile of the image's
    power spectrum."""
    gray = images.astype(np.float64).mean(-1)
    gy, gx = np.gradient(gray, axis=(1, 2))
    bins = ((np.arctan2(gy, gx) + np.pi) / (2 * np.pi) * 36).astype(int) % 36
    magnitude = np.hypot(gx, gy)
    hist = np.stack([np.bincount(b.ravel(), m.ravel(), 36) for b, m in zip(bins, magnitude)])
    symmetry = np.abs(np.fft.rfft(hist / hist.sum(1, keepdims=True), axis=1))[:, 1:13]
    centred = gray - gray.mean((1, 2), keepdims=True)
    spectrum = np.abs(np.fft.fft2(centred))
    spectrum /= spectrum.sum((1, 2), keepdims=True)
    f = np.fft.fftfreq(gray.shape[1])
    ring = np.minimum((np.hypot(f[:, None], f[None, :]) * gray.shape[1]).astype(int), gray.shape[1] // 2)
    radial = np.stack([np.bincount(ring.ravel(), s.ravel()) for s in spectrum])
    return np.hstack([symmetry, radial])


def test_classes_are_learnable_from_shape_not_colour(learnable_set):
    result, read = learnable_set
    x_train, y_train = read(result["id_train"])
    x_test, y_test = read(result["id_test"])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = model.fit(_shape_features(x_train), y_train).score(_shape_features(x_test), y_test)
    assert accuracy > 0.5, accuracy  # chance is 1/6

    def object_colour(folder, images, labels):
        masks = np.stack([_load(p) for p in sorted(Path(folder).glob("*/*.png"))])
        return np.stack([im[m == k].mean(0) for im, m, k in zip(images, masks, labels)])

    colour_model = LogisticRegression(max_iter=2000).fit(
        object_colour(result["gtmask_train"], x_train, y_train), y_train)
    colour_accuracy = colour_model.score(object_colour(result["gtmask_test"], x_test, y_test), y_test)
    assert colour_accuracy < 0.35, colour_accuracy


def _median_gradient(images):
    gray = images.astype(np.float64).mean(-1)
    magnitude = np.hypot(np.diff(gray, axis=1)[:, :, :-1], np.diff(gray, axis=2)[:, :-1, :])
    return np.median(magnitude.reshape(len(images), -1), axis=1)


def test_background_shift_is_visible_in_low_level_statistics(learnable_set):
    result, read = learnable_set
    id_stat = _median_gradient(read(result["id_test"])[0])

    def auroc(name):
        ood_stat = _median_gradient(read(result["ood"][name])[0])
        labels = np.r_[np.zeros(len(id_stat)), np.ones(len(ood_stat))]
        return roc_auc_score(labels, np.r_[id_stat, ood_stat])

    assert auroc("SynthNewBackgrounds") > 0.8
    # The foreground shift keeps the ID backgrounds: this statistic barely sees it.
    assert auroc("SynthNewObjects") < 0.7
