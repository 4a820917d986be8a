"""Tests of utils/figures/plots.py: figures are valid PNGs, mask overlays show the contract's values."""
import numpy as np
import pytest
from PIL import Image

from utils.figures import plots


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 50 and image.height > 50
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_score_histograms_png(tmp_path):
    rng = np.random.default_rng(0)
    ood = {"SVHN": rng.normal(-1, 1, 300), "Textures": np.r_[rng.normal(0, 1, 200), -np.inf]}
    path = plots.plot_score_histograms(rng.normal(1, 1, 500), ood, tmp_path / "hist.png", title="energy")
    assert path == tmp_path / "hist.png"
    _assert_png(path)


def test_score_histograms_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="ood_scores"):
        plots.plot_score_histograms(np.ones(3), {}, tmp_path / "h.png")
    with pytest.raises(ValueError, match="SVHN"):
        plots.plot_score_histograms(np.ones(3), {"SVHN": np.ones((2, 2))}, tmp_path / "h.png")


def test_roc_curves_png(tmp_path):
    rng = np.random.default_rng(1)
    curves = {"MSP": (rng.normal(1, 1, 200), rng.normal(0, 1, 150)),
              "DFB-MSP": (rng.normal(2, 1, 200), rng.normal(0, 1, 150))}
    _assert_png(plots.plot_roc_curves(curves, tmp_path / "roc.png", title="CIFAR-10 vs SVHN"))


def test_mask_grid_png_channels_first_and_resized_masks(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)  # [N, 3, H, W]
    masks = rng.integers(0, 3, (3, 16, 16)).astype(np.uint8)       # K = 2: values 0, 1, 2 = background
    masks[:, 0, 0] = 255
    true_masks = rng.integers(0, 3, (3, 32, 32)).astype(np.uint8)
    path = plots.save_mask_grid(images, masks, 2, tmp_path / "grid.png", class_names=["cat", "dog"],
                                extra_maps={"p_bg": rng.random((3, 8, 8))}, true_masks=true_masks)
    _assert_png(path)


def test_mask_grid_rejects_out_of_contract_values(tmp_path):
    images = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="masks"):
        plots.save_mask_grid(images, np.full((1, 8, 8), 7, np.uint8), 2, tmp_path / "g.png")
    with pytest.raises(ValueError, match="images"):
        plots.save_mask_grid(images.astype(np.float32), np.zeros((1, 8, 8), np.uint8), 2, tmp_path / "g.png")


def test_mask_overlay_by_hand():
    image = np.full((4, 4, 3), 200, np.uint8)
    mask = np.array([[0, 2], [255, 1]], np.uint8)  # K = 2, shown on a 4x4 image: 2x2 blocks
    shown = plots.mask_overlay(image, mask, 2)
    colours = plots.class_colours(2) * 255
    np.testing.assert_array_equal(shown[0:2, 0:2], np.broadcast_to(np.rint(0.45 * 200 + 0.55 * colours[0]), (2, 2, 3)))
    np.testing.assert_array_equal(shown[2:4, 2:4], np.broadcast_to(np.rint(0.45 * 200 + 0.55 * colours[1]), (2, 2, 3)))
    assert (shown[0:2, 2:4] == 70).all()   # background: 200 * 0.35
    assert (shown[2:4, 0:2] == 128).all()  # ignore: grey


def test_overlay_grid_fits_the_screen_and_rows_may_be_ragged(tmp_path):
    rng = np.random.default_rng(4)
    rows = [(f"set {r}", [(rng.integers(0, 256, (32 + 8 * r, 32, 3), dtype=np.uint8),
                           rng.integers(0, 3, (4, 4)).astype(np.uint8)) for _ in range(8 - r)]) for r in range(6)]
    path = plots.save_overlay_grid(rows, 2, tmp_path / "grid.png", max_pixels=(800, 500))
    _assert_png(path)
    with Image.open(path) as image:
        assert image.width <= 800 and image.height <= 500


def test_overlay_grid_rejects_empty_rows_and_bad_masks(tmp_path):
    with pytest.raises(ValueError, match="at least one example"):
        plots.save_overlay_grid([("a", [])], 2, tmp_path / "g.png")
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="mask"):
        plots.save_overlay_grid([("a", [(image, np.full((8, 8), 9, np.uint8))])], 2, tmp_path / "g.png")
