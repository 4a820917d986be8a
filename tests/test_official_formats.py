"""Files of the original DFB release: its masks (background 0, class k as k + 1), its
checkpoints ({'model': state dict with a 'module.' prefix, 'step', 'optim'}), and the
half_stride option recorded in our checkpoints."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import make_cam
import train
from datasets.folder import ImageFolderDataset, decode_all
from datasets.masks import PROVENANCE, mask_format_of
from models.resnetv2 import create_model
from models.loading import load_network
from utils.base.checkpoint import save_checkpoint

TINY = "ResNetV2-Tiny"
NUM_CLASSES = 2


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_split(root, per_class=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    for name in ("a", "b")[:NUM_CLASSES]:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def write_masks(split, mask_root, official, size=16, seed=1):
    """Random masks per the contract (label, background K, ignore 255); in the release's
    values when `official`. Returns {relative path: our-format mask} as written out by hand."""
    rng = np.random.default_rng(seed)
    ours = {}
    for label, name in enumerate(("a", "b")[:NUM_CLASSES]):
        (mask_root / name).mkdir(parents=True, exist_ok=True)
        for image in sorted((split / name).iterdir()):
            mask = rng.choice(np.array([label, NUM_CLASSES, 255], np.uint8), size=(size, size))
            ours[f"{name}/{image.stem}"] = mask
            # the release: 0 background, k + 1 class k; 255 kept as ignore
            written = np.where(mask == NUM_CLASSES, 0, np.where(mask == 255, 255, mask.astype(int) + 1)) \
                if official else mask
            Image.fromarray(written.astype(np.uint8)).save(mask_root / name / f"{image.stem}.png")
    return ours


def test_official_and_our_masks_give_identical_training_targets(tmp_path):
    split = make_split(tmp_path / "train")
    expected = write_masks(split, tmp_path / "ours", official=False)
    write_masks(split, tmp_path / "official", official=True)
    targets = {}
    for fmt in ("ours", "official"):
        dataset = ImageFolderDataset(split, with_masks=True, mask_root=tmp_path / fmt, num_classes=NUM_CLASSES)
        targets[fmt] = decode_all(dataset.reading_masks_as(fmt), progress=False)["masks"]
    assert torch.equal(targets["ours"], targets["official"])
    by_hand = np.stack([expected[key] for key in sorted(expected)])
    np.testing.assert_array_equal(targets["official"].numpy(), by_hand)
    # read our way, the release's background would be class 0 everywhere
    plain = ImageFolderDataset(split, with_masks=True, mask_root=tmp_path / "official", num_classes=NUM_CLASSES)
    assert not torch.equal(decode_all(plain, progress=False)["masks"], targets["ours"])


def test_official_mask_value_out_of_range_names_the_format(tmp_path):
    split = make_split(tmp_path / "train", per_class=1)
    write_masks(split, tmp_path / "official", official=True)
    Image.fromarray(np.full((16, 16), 3, np.uint8)).save(tmp_path / "official" / "a" / "0.png")
    dataset = ImageFolderDataset(split, with_masks=True, mask_root=tmp_path / "official",
                                 num_classes=NUM_CLASSES).reading_masks_as("official")
    with pytest.raises(ValueError, match=r"holds value 3; expected 0 \(background\), 1..2 .*--mask_format official"):
        dataset.load_mask(0)


def test_masks_without_provenance_are_refused_unless_the_format_is_given(tmp_path, capsys):
    split = make_split(tmp_path / "train")
    write_masks(split, tmp_path / "train_mask", official=True)
    argv = ["--task", "dfb", "--datadir", str(split), "--model", TINY, "--pretrained", "none", "--logdir",
            str(tmp_path / "runs"), "--name", "r", "--resolution", "16", "--device", "cpu", "--workers", "0"]
    with pytest.raises(SystemExit) as code:
        train.main(argv)
    assert code.value.code == 2
    error = capsys.readouterr().err
    assert "no provenance.json" in error and "--mask_format official" in error and "--mask_format ours" in error
    assert mask_format_of(tmp_path / "train_mask", "official") == "official"
    assert mask_format_of(tmp_path / "train_mask", "ours") == "ours"
    (tmp_path / "train_mask" / PROVENANCE).write_text(json.dumps({"classifier_sha256": "x"}))
    assert mask_format_of(tmp_path / "train_mask") == "ours"
    with pytest.raises(ValueError, match="--mask_format official, but .* our format"):
        mask_format_of(tmp_path / "train_mask", "official")


def test_train_reads_official_masks_and_records_half_stride(tmp_path):
    split = make_split(tmp_path / "train", per_class=6)
    write_masks(split, tmp_path / "train_mask", official=True)
    train.main(["--task", "dfb", "--datadir", str(split), "--model", TINY, "--pretrained", "none", "--half_stride",
                "--mask_format", "official", "--logdir", str(tmp_path / "runs"), "--name", "r", "--resolution", "16",
                "--train_resize", "16", "--steps", "5", "--batch", "4", "--device", "cpu", "--workers", "0",
                "--eval_every", "0"])
    checkpoint = torch.load(tmp_path / "runs" / "r" / "checkpoint.pth.tar", weights_only=False)
    assert checkpoint["half_stride"] is True and checkpoint["args"]["half_stride"] is True
    assert checkpoint["args"]["mask_format"] == "official"


def test_half_stride_survives_a_checkpoint_round_trip(tmp_path, capsys):
    for half_stride in (False, True):
        model = create_model("BiT-S-R50x1", head_size=2, half_stride=half_stride)
        path = tmp_path / f"{half_stride}.pth.tar"
        save_checkpoint(path, model_state=model.state_dict(), optim_state=None, step=1, args={}, task="cls",
                        model_name="BiT-S-R50x1", classes=["a", "b"], resolution=128, half_stride=half_stride)
        loaded, checkpoint, _, _ = load_network(path, expect_task="cls")
        with torch.no_grad():
            side = loaded.feature_map(torch.zeros(1, 3, 128, 128)).shape[-1]
        assert checkpoint["half_stride"] is half_stride and side == (8 if half_stride else 4)
    assert "original release" not in capsys.readouterr().out


def official_checkpoint(path, head_size=NUM_CLASSES, seed=0):
    """What the release's train.py saves: DataParallel names, step and optimizer state, nothing else."""
    torch.manual_seed(seed)
    model = create_model(TINY, head_size=head_size, zero_head=False)
    torch.save({"step": 10, "model": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optim": {"state": {}, "param_groups": []}}, path)
    return model


def test_official_checkpoint_loads_with_head_size_and_says_so(tmp_path, capsys):
    path = tmp_path / "bit.pth.tar"
    model = official_checkpoint(path)
    loaded, checkpoint, task, head_size = load_network(path, expect_task="cls", head_size=NUM_CLASSES,
                                                       model_name=TINY)
    assert (task, head_size, checkpoint["official"], checkpoint["step"]) == ("cls", NUM_CLASSES, True, 10)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)  # the head too, not dropped
    assert "original release" in capsys.readouterr().out
    with pytest.raises(ValueError, match="pass --task cls|dfb and --head_size"):
        load_network(path, model_name=TINY)
    with pytest.raises(ValueError, match="head of 2 classes, but a head of 5"):
        load_network(path, expect_task="cls", head_size=5, model_name=TINY)


def test_make_cam_writes_masks_from_an_official_checkpoint(tmp_path, capsys):
    split = make_split(tmp_path / "train", size=32)
    path = tmp_path / "bit.pth.tar"
    official_checkpoint(path)
    summary = make_cam.main([f"--dataset={split}", f"--model_path={path}", f"--head_size={NUM_CLASSES}",
                             f"--model={TINY}", "--resolution=32", "--device=cpu", "--workers=0", "--overlays=0"])
    assert summary["images_computed"] == 2 * 4
    assert "original release" in capsys.readouterr().out
    mask = np.array(Image.open(tmp_path / "train_mask" / "a" / "0.png"))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1, 2}
