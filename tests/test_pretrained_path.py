"""The pretrained path (scripts/pretrain.sh): Tiny ImageNet from its shared archive, a classifier's body
written as a BiT .npz (export_npz.py) and read back by --pretrained, and CAMs scored against object boxes
(make_cam.py --boxes, utils/cam/localisation.py), each against an independent computation."""
import csv
import io
import json
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import export_npz
import make_cam
from datasets.boxes import read_boxes
from datasets.shared_archives import unpack_tin
from datasets.tiny_imagenet import TIN_HELDOUT_EVERY
from models.resnetv2 import create_model, npz_key_map
from tests.helpers import assert_input_error, run_cli
from tests.test_resnetv2 import functional_bit_forward
from utils.base.checkpoint import save_checkpoint
import utils.cam.main as cam_main
from utils.cam.localisation import (box_masks, centre_prior_iou, centre_prior_pointing, localisation_counts,
                                     pointing_hits, points_in_boxes, positions_in_image)

TINY = "ResNetV2-Tiny"


def cls_checkpoint(path, classes, seed=0, finished=True, task="cls"):
    """A ResNetV2-Tiny checkpoint with random weights everywhere (GroupNorm and head included)."""
    torch.manual_seed(seed)
    model = create_model(TINY, head_size=len(classes) + (task == "dfb"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    save_checkpoint(path, model_state=model.state_dict(), optim_state={}, step=7, args={}, task=task,
                    model_name=TINY, classes=classes, resolution=32, finished=finished)
    return model


# -- export_npz.py: BiT keys, read back exactly ---------------------------------------------
def test_export_writes_the_body_with_bit_keys_and_loads_back_exactly(tmp_path, capsys):
    trained = cls_checkpoint(tmp_path / "cls.pth.tar", ["a", "b", "c"])
    status, out, _ = run_cli(export_npz, ["--checkpoint", str(tmp_path / "cls.pth.tar"),
                                          "--out", str(tmp_path / "body.npz")], capsys)
    assert status == 0 and "sha256" in out
    with np.load(tmp_path / "body.npz") as npz:
        arrays = dict(npz)
    expected_keys = set(npz_key_map(trained).values()) - {"resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"}
    assert set(arrays) == expected_keys
    assert arrays["resnet/root_block/standardized_conv2d/kernel"].shape == (7, 7, 3, 32)  # HWIO

    fine_tuned = create_model(TINY, head_size=10)  # another head size: the body alone travels
    fine_tuned.load_from_npz(tmp_path / "body.npz", load_head=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fine_tuned.pooled_features(x), trained.pooled_features(x))
        assert torch.count_nonzero(fine_tuned.head.conv.weight) == 0  # zero head, as BiT fine-tuning starts

    # independently: the whole network computed from the raw arrays in float64
    arrays["resnet/head/conv2d/kernel"] = np.zeros((1, 1, 1024, 1), np.float32)
    arrays["resnet/head/conv2d/bias"] = np.zeros(1, np.float32)
    _, pooled = functional_bit_forward(arrays, (1, 1, 1, 1), x.double(), last_block_stride=1)
    with torch.no_grad():
        assert torch.allclose(trained.pooled_features(x).double(), pooled, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("task, finished, fragment", [
    ("dfb", True, "needs a 'cls' checkpoint"),
    ("cls", False, "has not finished"),
])
def test_export_refuses_what_is_not_a_finished_classifier(tmp_path, capsys, task, finished, fragment):
    cls_checkpoint(tmp_path / "c.pth.tar", ["a", "b"], task=task, finished=finished)
    assert_input_error(export_npz, ["--checkpoint", str(tmp_path / "c.pth.tar"), "--out", str(tmp_path / "o.npz")],
                       capsys, fragment)
    assert not (tmp_path / "o.npz").exists()


# -- Tiny ImageNet from the shared archive --------------------------------------------------
def _jpeg(seed):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_tin_archive(path, wnids=("n01", "n02"), per_class=(0, 1, 50, 51, 100)):
    files = {}
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "classes.tsv", "".join(f"{w}\tthing {w}\n" for w in wnids).encode())
        for w in wnids:
            for i in per_class:
                name = f"train/{w}/{w}_{i}.JPEG"
                files[name] = _jpeg(len(files))
                _add(tar, name, files[name])
        rows = "file,wnid,x0,y0,x1,y1\n" + "".join(f"{name},{name.split('/')[1]},1,2,5,6\n" for name in files)
        _add(tar, "train_boxes.csv", rows.encode())
    return files


def test_unpack_tin_splits_every_fiftieth_image_into_val_and_keeps_boxes(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    files = write_tin_archive(shared / "tin_train.tar.gz")
    out = unpack_tin(shared, tmp_path / "data", log=lambda _: None)
    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.JPEG")}
    expected = {}
    for name, payload in files.items():
        _, wnid, filename = name.split("/")
        index = int(filename.split("_")[1].split(".")[0])
        expected[f"{'val' if index % TIN_HELDOUT_EVERY == 0 else 'train'}/{wnid}/{filename}"] = payload
    assert written == expected
    assert (out / "classes.tsv").read_text() == "n01\tthing n01\nn02\tthing n02\n"
    assert read_boxes(out / "train_boxes.csv")["n02_51.JPEG"] == (1, 2, 5, 6)
    # a second run keeps the complete set; other limits are refused
    assert unpack_tin(shared, tmp_path / "data", log=lambda _: None) == out
    with pytest.raises(ValueError, match="per_class"):
        unpack_tin(shared, tmp_path / "data", per_class=2, log=lambda _: None)


def test_unpack_tin_names_the_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="tin_train.tar"):
        unpack_tin(tmp_path, tmp_path / "data")


@pytest.mark.parametrize("content, fragment", [
    ("file,x0,y0,x1\na.jpg,1,2,3\n", "no column(s) ['y1']"),
    ("file,x0,y0,x1,y1\na.jpg,1,2,x,4\n", "line 2: expected integer corners"),
    ("file,x0,y0,x1,y1\na.jpg,5,2,3,4\n", "line 2: box (5, 2, 3, 4)"),
])
def test_box_file_errors_name_the_line(tmp_path, content, fragment):
    (tmp_path / "b.csv").write_text(content)
    with pytest.raises(ValueError) as error:
        read_boxes(tmp_path / "b.csv")
    assert fragment in str(error.value)


# -- CAM against boxes ------------------------------------------------------------------------
def naive_box_mask(box, image_size, height, width):
    """Pixel by pixel: the map pixel's centre, mapped into the image, lies inside the box's pixels."""
    x0, y0, x1, y1 = box
    w0, h0 = image_size
    mask = np.zeros((height, width), bool)
    for r in range(height):
        for c in range(width):
            x, y = (c + 0.5) * w0 / width, (r + 0.5) * h0 / height
            mask[r, c] = int(x) in range(x0, x1 + 1) and int(y) in range(y0, y1 + 1)
    return mask


def naive_pointing(cam, box, image_size):
    """The first maximum of the map, its cell's centre scaled into the image, inside the box's pixels;
    a map without a positive value misses."""
    r, c = np.unravel_index(np.argmax(cam), cam.shape)
    return bool(cam.max() > 0 and naive_box_mask(box, image_size, *cam.shape)[r, c])


def test_a_map_cell_maps_to_its_centre_in_the_image():
    """By hand: cell (row 1, column 6) of a 4 x 8 map over a 100 x 30 image (W0 x H0) spans x 75..87.5,
    y 7.5..15, centre (6.5 * 100 / 8, 1.5 * 30 / 4) = (81.25, 11.25); cell (0, 0) of a 2 x 2 map over a
    3 x 5 image: (0.5 * 3 / 2, 0.5 * 5 / 2) = (0.75, 1.25); cell (1, 1): (2.25, 3.75)."""
    points = positions_in_image(torch.tensor([[1, 6]]), (4, 8), torch.tensor([[100, 30]]))
    assert points.tolist() == [[81.25, 11.25]]
    points = positions_in_image(torch.tensor([[0, 0], [1, 1]]), (2, 2), torch.tensor([[3, 5], [3, 5]]))
    assert points.tolist() == [[0.75, 1.25], [2.25, 3.75]]
    # inclusive corners: box (80, 10, 81, 11) is x in [80, 82), y in [10, 12)
    inside = points_in_boxes(torch.tensor([[81.25, 11.25], [82.0, 11.0], [80.0, 12.0], [79.9, 10.0]]),
                             torch.tensor([[80, 10, 81, 11]] * 4))
    assert inside.tolist() == [True, False, False, False]


def test_pointing_maps_the_peak_with_each_axis_own_size():
    """A 2 x 4 map (h x w) over a 40 x 20 image (W0 x H0), peak at cell (1, 3): centre (3.5 * 40 / 4,
    1.5 * 20 / 2) = (35, 15), inside box (30, 10, 39, 19). Swapping W0 and H0 would put it at
    (3.5 * 20 / 4, 1.5 * 40 / 2) = (17.5, 30), outside; reading the cell as an image pixel, (3, 1), outside."""
    cam = torch.zeros(1, 2, 4)
    cam[0, 1, 3] = 2.0
    cam[0, 0, 0] = 1.0
    size = torch.tensor([[40, 20]])
    assert pointing_hits(cam, torch.tensor([[30, 10, 39, 19]]), size).tolist() == [True]
    assert pointing_hits(cam, torch.tensor([[15, 25, 20, 35]]), size).tolist() == [False]  # the swapped point's box
    # a CAM that is zero everywhere has no peak: a miss even when the box covers the whole image
    assert pointing_hits(torch.zeros(1, 2, 4), torch.tensor([[0, 0, 39, 19]]), size).tolist() == [False]


def test_localisation_against_pixel_loops():
    rng = np.random.default_rng(0)
    boxes = torch.tensor([[3, 5, 20, 30], [0, 0, 63, 63], [40, 10, 41, 11], [10, 10, 50, 20], [0, 0, 79, 63]])
    sizes = torch.tensor([[64, 64], [64, 64], [64, 48], [80, 64], [80, 64]])
    coarse = torch.from_numpy(rng.random((5, 3, 5)))  # a network's own map: other cells than the mask's
    fine = torch.from_numpy(rng.random((5, 16, 16)))
    fine[4] = 0.0  # no peak: a miss although the box is the whole image
    foreground = torch.from_numpy(rng.random((5, 16, 16)) > 0.6)
    truth = np.stack([naive_box_mask(b.tolist(), s.tolist(), 16, 16) for b, s in zip(boxes, sizes)])
    assert np.array_equal(box_masks(boxes, sizes, 16, 16).numpy(), truth)

    images, coarse_hits, fine_hits, iou_sum = localisation_counts([coarse, fine], foreground, boxes, sizes).tolist()
    fg = foreground.numpy()
    ious = [(fg[i] & truth[i]).sum() / (fg[i] | truth[i]).sum() for i in range(5)]
    assert images == 5
    for maps, hits in ((coarse, coarse_hits), (fine, fine_hits)):
        expected = [naive_pointing(m, b.tolist(), s.tolist()) for m, b, s in zip(maps.numpy(), boxes, sizes)]
        assert hits == sum(expected) and 0 < hits < 5
    assert iou_sum == pytest.approx(sum(ious))


def test_centre_prior_of_identical_centred_boxes_is_perfect():
    boxes = torch.tensor([[16, 16, 47, 47]] * 3)  # 32 x 32, centred in 64 x 64
    sizes = torch.tensor([[64, 64]] * 3)
    assert centre_prior_pointing(boxes, sizes, (64, 64)) == 1.0 and centre_prior_iou(boxes, sizes, 64, 64) == 1.0
    off_centre = torch.tensor([[0, 0, 15, 15]] * 2)
    sizes = torch.tensor([[64, 64]] * 2)
    assert centre_prior_pointing(off_centre, sizes, (64, 64)) == 0.0
    assert centre_prior_iou(off_centre, sizes, 64, 64) == 0.0


def test_centre_prior_points_at_the_centre_cell_of_each_grid():
    """By hand, 64 x 64 images: on a 64 x 64 map the centre pixel (32, 32) stands for (32.5, 32.5); on a
    4 x 4 map the centre cell (2, 2) for (40, 40). Box (20, 20, 35, 35) holds the first point only, box
    (36, 36, 47, 47) the second only; of a 96 x 32 image, the 4 x 4 cell (2, 2) is (60, 20)."""
    sizes = torch.tensor([[64, 64]])
    assert centre_prior_pointing(torch.tensor([[20, 20, 35, 35]]), sizes, (64, 64)) == 1.0
    assert centre_prior_pointing(torch.tensor([[20, 20, 35, 35]]), sizes, (4, 4)) == 0.0
    assert centre_prior_pointing(torch.tensor([[36, 36, 47, 47]]), sizes, (4, 4)) == 1.0
    assert centre_prior_pointing(torch.tensor([[36, 36, 47, 47]]), sizes, (64, 64)) == 0.0
    assert centre_prior_pointing(torch.tensor([[60, 20, 60, 20], [20, 60, 20, 60]]),
                                 torch.tensor([[96, 32], [96, 32]]), (4, 4)) == 0.5


class ColourCells(torch.nn.Module):
    """A classifier with hand-made CAMs: class k's dense logit at a cell is the mean of colour channel k
    (red: class 0, green: class 1) over the cell's 4 x 4 input pixels, so at 32 px its own map is 8 x 8 and
    a red image is predicted as class 0, a green one as class 1. Flipping the input flips its map exactly."""

    def forward(self, x):
        return self.dense_logits(x).mean(dim=(2, 3))

    def dense_logits(self, x):
        return F.avg_pool2d(x[:, :2], 4)


def write_off_centre_split(root):
    """Two non-square images, each with one object off-centre in a box of its own, and one image without a box.

    a/a_0.png, 64 wide x 32 tall, red: a full-red patch x 48..55, y 20..23 (exactly cell (5, 6) of the
    8 x 8 map: a cell is 8 x 4 image pixels), the object, boxed (40, 16, 63, 27); and a larger, dimmer
    patch (red 191) x 16..39, y 8..19, cells (2..4, 2..4), a distractor left of the box.
    b/b_0.png, 32 wide x 64 tall, green: a full-green patch x 16..19, y 40..47 (cell (5, 4): a cell is
    4 x 8 pixels), boxed (16, 34, 23, 53). a/a_1.png: black, 32 x 32, no box."""
    for name in ("a", "b"):
        (root / "split" / name).mkdir(parents=True)
    first = np.zeros((32, 64, 3), np.uint8)
    first[20:24, 48:56, 0] = 255
    first[8:20, 16:40, 0] = 191
    second = np.zeros((64, 32, 3), np.uint8)
    second[40:48, 16:20, 1] = 255
    for path, pixels in (("a/a_0.png", first), ("b/b_0.png", second), ("a/a_1.png", np.zeros((32, 32, 3), np.uint8))):
        Image.fromarray(pixels).save(root / "split" / path)
    rows = [("file", "wnid", "x0", "y0", "x1", "y1"), ("train/a/a_0.png", "a", 40, 16, 63, 27),
            ("train/b/b_0.png", "b", 16, 34, 23, 53)]
    with open(root / "boxes.csv", "w", newline="") as file:
        csv.writer(file).writerows(rows)
    return {"a/a_0.png": ((40, 16, 63, 27), (64, 32)), "b/b_0.png": ((16, 34, 23, 53), (32, 64))}


def test_make_cam_boxes_off_centre_on_non_square_images(tmp_path, capsys, monkeypatch):
    """make_cam.py --boxes end to end (reading, resizing, the three peaks, the prior), expected values by hand.

    The images are resized to 32 x 32 (--resolution 32; whole, not cropped), so the 8 x 8 map's cell (r, c)
    stands for image point ((c + 0.5) W0 / 8, (r + 0.5) H0 / 8), a 32 x 32 map's pixel for
    ((c + 0.5) W0 / 32, (r + 0.5) H0 / 32); images normalised to [-1, 1], black = -1.

    a_0 (64 x 32). Its own map (the red channel's cell means, ReLU): the object cell (5, 6) holds 0.875 (its
    outer pixel columns are 7/8 red after the antialiased 2:1 shrink in x: (0.75 + 1 + 1 + 0.75) / 4), the
    distractor's cells 0.45-0.5 (red 191 -> 0.498), every other cell is black -> 0.
    - raw CAM: peak cell (5, 6) -> (6.5 * 8, 5.5 * 4) = (52, 22), inside (40..63, 16..27): hit. With W0 and
      H0 swapped it would be (26, 44), and without the scaling to the image (6.5, 5.5): both outside.
    - multi-scale CAM (scale 1 and its flip, upsampled x4 bilinearly): at most 0.875 * (7/8)^2 = 0.67 per pass
      at pixels (21..22, 25..26) against the distractor's 0.5: peak (21, 25) -> (25.5 * 2, 21.5) = (51, 21.5): hit.
    - blurred (sigma 4): a blob one cell wide keeps (0.369)^2 = 0.14 of its height (the Gaussian's mass under
      a tent 4 pixels wide each side), the 3 x 3-cell distractor (0.850)^2 = 0.72 (plateau +-4, ramps to +-8):
      0.12 against 0.33, so the peak moves to the distractor, near its centre pixel (14, 14) -> x about 29 < 40:
      miss. This is how the blur pulls a peak towards the larger, more central blob.
    b_0 (32 x 64), green: its map has one positive cell, (5, 4) -> (4.5 * 4, 5.5 * 8) = (18, 44) inside
    (16..23, 34..53) (swapped: (36, 22), outside); the upsampled and the blurred peaks stay at pixels
    (21..22, 17..18) -> x 17.5..18.5, y 43..45: hits. a_1 has no box.
    So pointing: raw 2/2, multi-scale 2/2, blurred 1/2.

    Centre prior, pointing at the centre of each map's grid: on the 32 x 32 maps pixel (16, 16), for a_0
    (16.5 * 2, 16.5) = (33, 16.5), outside (x < 40), for b_0 (16.5, 33), outside (y < 34): 0/2; on the 8 x 8
    map cell (4, 4), for a_0 (4.5 * 8, 4.5 * 4) = (36, 18), outside, for b_0 (18, 36), inside: 1/2.
    IoU: mean box size ((24 + 8) / 2, (12 + 20) / 2) = 16 x 16, on the 32 x 32 mask.
    a_0: centred box x 24..39 -> columns 12..19, y 8..23 -> rows 8..23; the true box columns 20..31: IoU 0.
    b_0: centred box x 8..23 -> columns 8..23, y 24..39 -> rows 12..19 (128 pixels); true box columns 16..23,
    rows 17..26 (80 pixels); overlap 8 x 3 = 24: IoU 24 / (128 + 80 - 24) = 3/23. Mean (0 + 3/23) / 2 = 3/46.
    """
    boxes = write_off_centre_split(tmp_path)
    (tmp_path / "cls.pth.tar").write_bytes(b"stands for a checkpoint")  # its digest goes in provenance.json
    monkeypatch.setattr(cam_main, "load_network", lambda *args, **kwargs: (
        ColourCells(), {"resolution": 32, "classes": ["a", "b"]}, "cls", 2))
    argv = [f"--dataset={tmp_path / 'split'}", f"--model_path={tmp_path / 'cls.pth.tar'}", "--head_size=2",
            "--out", str(tmp_path / "masks"), "--boxes", str(tmp_path / "boxes.csv"), "--device", "cpu",
            "--amp", "none", "--workers", "0", "--overlays", "0", "--scales", "1.0", "--resolution", "32"]
    status, out, err = run_cli(make_cam, argv, capsys)
    assert status == 0, err
    found = json.loads((tmp_path / "masks" / "summary.json").read_text())["against_boxes"]
    assert found["images_with_box"] == 2 and found["images_without_box"] == 1
    assert found["pointing_accuracy"] == {"raw_cam": 1.0, "multiscale_cam": 1.0, "blurred_cam": 0.5}
    assert list(found["pointing_maps"]) == list(found["pointing_accuracy"])
    assert found["map_sizes"] == {"raw_cam": [8, 8], "multiscale_cam": [32, 32], "blurred_cam": [32, 32]}
    assert found["centre_prior_pointing_accuracy"] == {"raw_cam": 0.5, "multiscale_cam": 0.0, "blurred_cam": 0.0}
    assert found["centre_prior_box_iou"] == pytest.approx(3 / 46)
    assert "raw_cam 1.000 (centre prior 0.500), multiscale_cam 1.000 (centre prior 0.000), blurred_cam 0.500" in out
    # the masks' IoU with the boxes, from the written masks and the pixel loop
    ious = []
    for path, (box, size) in boxes.items():
        foreground = np.array(Image.open(tmp_path / "masks" / path)) < 2
        truth = naive_box_mask(box, size, 32, 32)
        ious.append((foreground & truth).sum() / (foreground | truth).sum())
    assert found["mask_box_iou"] == pytest.approx(np.mean(ious)) and 0 < found["mask_box_iou"] < 1
    # rerun: masks are on disk, yet every CAM is scored again (the same numbers)
    status, _, err = run_cli(make_cam, argv, capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "masks" / "summary.json").read_text())["against_boxes"] == found


def test_make_cam_boxes_with_a_classifier_checkpoint(tmp_path, capsys):
    """A ResNetV2 checkpoint through make_cam.py --boxes; boxes covering the whole image make the mask-box
    IoU each mask's foreground fraction."""
    classes = ["a", "b"]
    rng = np.random.default_rng(1)
    rows = [("file", "wnid", "x0", "y0", "x1", "y1")]
    for k, name in enumerate(classes):
        (tmp_path / "split" / name).mkdir(parents=True)
        for i in range(3):
            filename = f"{name}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "split" / name / filename)
            if (k, i) != (1, 2):  # one image without a box
                rows.append((f"train/{name}/{filename}", name, 0, 0, 23, 23))
    with open(tmp_path / "boxes.csv", "w", newline="") as file:
        csv.writer(file).writerows(rows)
    cls_checkpoint(tmp_path / "cls.pth.tar", classes)
    argv = [f"--dataset={tmp_path / 'split'}", f"--model_path={tmp_path / 'cls.pth.tar'}", "--head_size=2",
            "--out", str(tmp_path / "masks"), "--boxes", str(tmp_path / "boxes.csv"), "--device", "cpu",
            "--workers", "0", "--overlays", "0"]
    status, _, err = run_cli(make_cam, argv, capsys)
    assert status == 0, err
    summary = json.loads((tmp_path / "masks" / "summary.json").read_text())
    boxes = summary["against_boxes"]
    assert boxes["images_with_box"] == 5 and boxes["images_without_box"] == 1
    assert set(boxes["pointing_accuracy"]) == {"raw_cam", "multiscale_cam", "blurred_cam"}
    fractions = []
    for k, name in enumerate(classes):
        for i in range(3):
            if (k, i) != (1, 2):
                mask = np.array(Image.open(tmp_path / "masks" / name / f"{name}_{i}.png"))
                fractions.append((mask < 2).mean())
    assert boxes["mask_box_iou"] == pytest.approx(np.mean(fractions))


# -- scripts/pretrain.sh on the real archive, at tiny size ------------------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pretrain_script_writes_an_npz_that_fine_tuning_loads(shared_data, tmp_path):
    import os
    import subprocess
    env = {**os.environ, "SHARED_DATA": str(shared_data), "PER_CLASS": "51", "STEPS": "5", "BATCH": "32",
           "RESOLUTION": "32", "TRAIN_RESIZE": "36", "WORKERS": "0", "DATA_DIR": str(tmp_path / "data"),
           "OUT": str(tmp_path / "run"), "NPZ": str(tmp_path / "tin.npz"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "scripts/pretrain.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # the first 51 images (archive order) of each of the 202 classes; those numbered 0, 50, 100, ... are val
    val = list((tmp_path / "data" / "tin" / "val").rglob("*.JPEG"))
    assert val and all(int(p.stem.rsplit("_", 1)[1]) % 50 == 0 for p in val)
    metrics = json.loads((tmp_path / "run" / "tin" / "final_metrics.json").read_text())
    assert metrics["initialised_from"] == {"from": "scratch"} and "test_top1" in metrics
    model = create_model(TINY, head_size=10)
    model.load_from_npz(tmp_path / "tin.npz", load_head=False)
    # a second invocation finds the npz and does nothing
    again = subprocess.run(["bash", "scripts/pretrain.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to do" in again.stdout
