"""bench/jpeg_cost.py: the original copy is the 2x2 mean of the source computed by hand, the JPEG copy is one
encode/decode of it with 4:2:0 chroma, and a build is kept or redone by its marker."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from bench import jpeg_cost


def write_source(root, classes=3, per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    images = {}
    for c in range(classes):
        for i in range(per_class):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            path = root / f"class{c}" / f"img{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            images[(f"class{c}", f"img{i}")] = pixels
    return images


def test_original_is_the_2x2_mean_and_jpeg_is_one_round_trip(tmp_path):
    images = write_source(tmp_path / "src")
    jpeg_cost.build(tmp_path / "src", tmp_path / "out", classes=2, progress=False)
    assert sorted(p.name for p in (tmp_path / "out" / "original").iterdir()) == ["class0", "class1"]
    for (name, stem), pixels in images.items():
        if name == "class2":
            continue
        original = np.asarray(Image.open(tmp_path / "out" / "original" / name / f"{stem}.png"))
        by_hand = pixels.astype(float).reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
        assert np.abs(original - by_hand).max() <= 1  # PIL's fixed-point mean is within one level of it
        jpeg = np.asarray(Image.open(tmp_path / "out" / "jpeg75" / name / f"{stem}.png"))
        np.testing.assert_array_equal(jpeg, jpeg_cost.jpeg_round_trip(original))
        assert np.abs(jpeg.astype(int) - original).mean() > 1  # lossy: the noise images lose detail


def test_round_trip_subsamples_the_chroma_2x2():
    rng = np.random.default_rng(1)
    luma = np.full((32, 32), 128.0)
    fine = rng.uniform(-40, 40, (32, 32))  # red-blue chroma that varies from pixel to pixel

    def rgb(cr):  # ITU-R BT.601 YCbCr -> RGB with Cb = 0
        return np.clip(np.stack([luma + 1.402 * cr, luma - 0.714136 * cr, luma], axis=-1), 0, 255).round().astype(
            np.uint8)

    def cr_of(pixels):
        r, g, b = (pixels[..., k].astype(float) for k in range(3))
        return 0.5 * r - 0.418688 * g - 0.081312 * b

    pixelwise = jpeg_cost.jpeg_round_trip(rgb(fine))
    buffer = io.BytesIO()  # the same quality without chroma subsampling
    Image.fromarray(rgb(fine)).save(buffer, format="JPEG", quality=75, subsampling="4:4:4")
    full_chroma = np.asarray(Image.open(buffer))

    def within_block_spread(pixels):
        return cr_of(pixels).reshape(16, 2, 16, 2).std(axis=(1, 3)).mean()

    assert within_block_spread(rgb(fine)) > 10
    assert within_block_spread(pixelwise) < within_block_spread(full_chroma) / 2  # the 2x2 subsampling removed it


def test_a_finished_build_is_kept_and_other_classes_rebuild(tmp_path):
    write_source(tmp_path / "src")
    jpeg_cost.build(tmp_path / "src", tmp_path / "out", classes=3, progress=False)
    marker = json.loads((tmp_path / "out" / ".complete").read_text())
    assert marker["classes"] == ["class0", "class1", "class2"] and marker["quality"] == 75
    kept = tmp_path / "out" / "jpeg75" / "class0" / "img0.png"
    kept.write_bytes(b"left alone")
    jpeg_cost.build(tmp_path / "src", tmp_path / "out", classes=3, progress=False)
    assert kept.read_bytes() == b"left alone"  # same parameters: nothing rewritten
    jpeg_cost.build(tmp_path / "src", tmp_path / "out", classes=2, progress=False)
    assert not (tmp_path / "out" / "original" / "class2").exists()
    assert kept.read_bytes() != b"left alone"


def test_the_command_refuses_too_many_classes(tmp_path, capsys):
    write_source(tmp_path / "src", classes=2)
    with pytest.raises(ValueError, match="fewer than --classes 5"):
        jpeg_cost.main(["--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--classes", "5"])
    with pytest.raises(SystemExit):
        jpeg_cost.main(["--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--classes", "1"])
    assert "--classes must be at least 2" in capsys.readouterr().err
