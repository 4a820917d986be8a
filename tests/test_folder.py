"""ImageFolder listing, naming, mask contract and decoding (datasets/folder.py)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import folder, masks


def _save(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _rgb(seed, size=(8, 8)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _make_split(root, counts, size=(8, 8)):
    """ImageFolder with counts = {class: number of images}; returns {path: pixels}."""
    written = {}
    for c, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            pixels = _rgb(100 * c + i, size)
            written[_save(root / name / f"img{i:02d}.png", pixels)] = pixels
    return written


def _make_masks(split_root, num_classes, size=(16, 16), value=None):
    for image in sorted(split_root.glob("*/*.png")):
        label = sorted(p.name for p in split_root.iterdir()).index(image.parent.name)
        mask = np.full(size, num_classes, dtype=np.uint8)  # background
        mask[: size[0] // 2] = label if value is None else value
        mask[0, 0] = masks.IGNORE_INDEX
        _save(masks.mask_path(masks.mask_root_for(split_root), image), mask)


# ----------------------------------------------------------------------------- naming

def test_dataset_names_follow_the_contract():
    assert folder.dataset_name("dataset/cifar10/test", "id") == "cifar10_test"
    assert folder.dataset_name(Path("dataset/cifar100/train/"), "id") == "cifar100_train"
    assert folder.dataset_name("dataset/SVHN/test", "ood") == "SVHN"
    assert folder.dataset_name("dataset/Places/Validation", "ood") == "Places"
    assert folder.dataset_name("dataset/Textures", "ood") == "Textures"
    assert folder.dataset_name("dataset/cifar100/val", "ood") == "cifar100"
    with pytest.raises(ValueError, match="role"):
        folder.dataset_name("dataset/SVHN/test", "train")


def test_dataset_name_of_current_directory_uses_real_folder_names(tmp_path, monkeypatch):
    split = tmp_path / "mnist" / "test"
    split.mkdir(parents=True)
    monkeypatch.chdir(split)
    assert folder.dataset_name(".", "id") == "mnist_test"
    assert masks.mask_root_for(".") == tmp_path / "mnist" / "test_mask"


# ----------------------------------------------------------------------------- listing

def test_list_samples_sorted_by_class_then_filename(tmp_path):
    _make_split(tmp_path, {"b": 2, "a": 3})
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    _save(tmp_path / "a" / ".img00.x1y2.tmp.png", _rgb(9))  # an interrupted atomic write
    _save(tmp_path / "b" / "UPPER.JPG", _rgb(7))
    (tmp_path / ".hidden").mkdir()
    assert folder.find_classes(tmp_path) == ["a", "b"]
    samples = folder.list_samples(tmp_path)
    assert [(p.parent.name, p.name, y) for p, y in samples] == [
        ("a", "img00.png", 0), ("a", "img01.png", 0), ("a", "img02.png", 0),
        ("b", "UPPER.JPG", 1), ("b", "img00.png", 1), ("b", "img01.png", 1)]


def test_given_class_order_sets_the_labels(tmp_path):
    _make_split(tmp_path, {"a": 1, "b": 1})
    samples = folder.list_samples(tmp_path, classes=["b", "a"])
    assert [(p.parent.name, y) for p, y in samples] == [("b", 0), ("a", 1)]


def test_missing_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*<root>/<class>/<image>"):
        folder.find_classes(tmp_path / "nowhere")


def test_root_that_is_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        folder.list_samples(tmp_path / "file")


def test_root_without_class_folders_is_named(tmp_path):
    _save(tmp_path / "loose.png", _rgb(0))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}.*no class sub-folders"):
        folder.list_samples(tmp_path)


def test_empty_class_folder_is_named(tmp_path):
    _make_split(tmp_path, {"a": 1})
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'empty'}.*no images"):
        folder.list_samples(tmp_path)


def test_class_mismatch_lists_the_difference(tmp_path):
    _make_split(tmp_path, {"a": 1, "b": 1, "d": 1})
    with pytest.raises(ValueError, match=r"missing \['c'\], unexpected \['d'\]"):
        folder.list_samples(tmp_path, classes=["a", "b", "c"])


def test_two_images_sharing_a_stem_are_rejected(tmp_path):
    _make_split(tmp_path, {"a": 1})
    _save(tmp_path / "a" / "img00.bmp", _rgb(3))
    with pytest.raises(ValueError, match=r"img00\.bmp.*img00\.png|img00\.png.*img00\.bmp"):
        folder.list_samples(tmp_path)


# ----------------------------------------------------------------------------- decoding

def test_items_hold_the_file_pixels(tmp_path):
    written = _make_split(tmp_path, {"a": 2, "b": 1}, size=(6, 10))
    dataset = folder.ImageFolderDataset(tmp_path)
    assert len(dataset) == 3 and dataset.classes == ["a", "b"]
    for i, (path, label) in enumerate(dataset.samples):
        item = dataset[i]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 6, 10)
        assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), written[path])
        assert item["label"].dtype == torch.int64 and int(item["label"]) == label
        assert item["index"] == i and "mask" not in item


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    _save(tmp_path / "a" / "gray.png", gray)
    rgba = np.dstack([_rgb(1), np.full((8, 8), 128, np.uint8)])
    _save(tmp_path / "a" / "rgba.png", rgba)
    dataset = folder.ImageFolderDataset(tmp_path)
    image = dataset[0]["image"]
    assert image.shape == (3, 8, 8)
    for channel in image:
        assert np.array_equal(channel.numpy(), gray)
    assert np.array_equal(dataset[1]["image"].permute(1, 2, 0).numpy(), rgba[..., :3])


def test_image_size_resizes_square_with_pil_bilinear(tmp_path):
    written = _make_split(tmp_path, {"a": 1}, size=(20, 12))
    dataset = folder.ImageFolderDataset(tmp_path, image_size=8)
    expected = np.array(Image.fromarray(next(iter(written.values()))).resize((8, 8), Image.BILINEAR))
    assert np.array_equal(dataset[0]["image"].permute(1, 2, 0).numpy(), expected)
    assert dataset.native_size() == (8, 8)


def test_corrupt_image_is_named(tmp_path):
    _make_split(tmp_path, {"a": 1})
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG garbage bytes, not an image" * 4)
    dataset = folder.ImageFolderDataset(tmp_path)
    broken = [i for i, (p, _) in enumerate(dataset.samples) if p.name == "broken.png"][0]
    with pytest.raises(OSError, match="broken.png"):
        dataset[broken]
    with pytest.raises(OSError, match="broken.png"):
        folder.decode_all(dataset, progress=False)


def test_native_size_of_uniform_set(tmp_path):
    _make_split(tmp_path, {"a": 2, "b": 2}, size=(7, 9))
    assert folder.ImageFolderDataset(tmp_path).native_size() == (7, 9)


def test_native_size_names_two_files_of_different_sizes(tmp_path):
    _make_split(tmp_path, {"a": 2}, size=(8, 8))
    _save(tmp_path / "b" / "big.png", _rgb(5, size=(12, 16)))
    dataset = folder.ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match=r"img00\.png is 8x8.*big\.png is 16x12.*image_size"):
        dataset.native_size()
    with pytest.raises(ValueError, match=r"big\.png.*image_size"):
        folder.decode_all(dataset, batch_size=2, progress=False)


def test_decode_all_shapes_dtypes_and_order(tmp_path):
    written = _make_split(tmp_path, {"a": 3, "b": 2, "c": 2}, size=(8, 8))
    _make_masks(tmp_path, num_classes=3)
    dataset = folder.ImageFolderDataset(tmp_path, with_masks=True, num_classes=3)
    decoded = folder.decode_all(dataset, batch_size=3, workers=0, progress=False)
    assert decoded["images"].shape == (7, 3, 8, 8) and decoded["images"].dtype == torch.uint8
    assert decoded["labels"].tolist() == [0, 0, 0, 1, 1, 2, 2] and decoded["labels"].dtype == torch.int64
    assert decoded["masks"].shape == (7, 16, 16) and decoded["masks"].dtype == torch.uint8
    for i, (path, label) in enumerate(dataset.samples):
        assert np.array_equal(decoded["images"][i].permute(1, 2, 0).numpy(), written[path])
        assert decoded["masks"][i, 4, 4] == label and decoded["masks"][i, 12, 4] == 3
        assert decoded["masks"][i, 0, 0] == 255


def test_decode_all_with_workers_matches_in_process(tmp_path):
    _make_split(tmp_path, {"a": 3, "b": 3}, size=(8, 8))
    dataset = folder.ImageFolderDataset(tmp_path)
    serial = folder.decode_all(dataset, batch_size=4, workers=0, progress=False)
    parallel = folder.decode_all(dataset, batch_size=4, workers=1, progress=False)
    assert set(serial) == {"images", "labels"}
    assert torch.equal(serial["images"], parallel["images"])
    assert torch.equal(serial["labels"], parallel["labels"])


# ----------------------------------------------------------------------------- masks

def test_masks_need_num_classes(tmp_path):
    _make_split(tmp_path / "train", {"a": 1})
    _make_masks(tmp_path / "train", num_classes=1)
    with pytest.raises(ValueError, match="num_classes"):
        folder.ImageFolderDataset(tmp_path / "train", with_masks=True)
    with pytest.raises(ValueError, match="num_classes=2.*1 class"):
        folder.ImageFolderDataset(tmp_path / "train", with_masks=True, num_classes=2)


def test_missing_mask_names_the_path_and_make_cam(tmp_path):
    split = tmp_path / "train"
    _make_split(split, {"a": 2, "b": 1})
    _make_masks(split, num_classes=2)
    gone = tmp_path / "train_mask" / "a" / "img01.png"
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{gone}.*make_cam\.py.*{split}"):
        folder.ImageFolderDataset(split, with_masks=True, num_classes=2)


def test_mask_deleted_after_listing_is_named(tmp_path):
    split = tmp_path / "train"
    _make_split(split, {"a": 1})
    _make_masks(split, num_classes=1)
    dataset = folder.ImageFolderDataset(split, with_masks=True, num_classes=1)
    dataset.mask_path(0).unlink()
    with pytest.raises(FileNotFoundError, match=r"train_mask/a/img00\.png.*make_cam\.py"):
        dataset[0]


def test_mask_root_can_be_given(tmp_path):
    split = tmp_path / "train"
    _make_split(split, {"a": 1})
    _make_masks(split, num_classes=1)
    (tmp_path / "train_mask").rename(tmp_path / "elsewhere")
    dataset = folder.ImageFolderDataset(split, with_masks=True, num_classes=1, mask_root=tmp_path / "elsewhere")
    assert dataset[0]["mask"].shape == (16, 16)


def test_bad_mask_value_is_named(tmp_path):
    split = tmp_path / "train"
    _make_split(split, {"a": 1, "b": 1, "c": 1})
    _make_masks(split, num_classes=3, value=200)  # neither a class (0..2), background (3) nor ignore (255)
    dataset = folder.ImageFolderDataset(split, with_masks=True, num_classes=3)
    with pytest.raises(ValueError, match=r"train_mask/a/img00\.png holds value 200"):
        dataset[0]


def test_mask_values_at_the_limits_are_accepted(tmp_path):
    split = tmp_path / "train"
    _make_split(split, {"a": 1, "b": 1})
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    for image in sorted(split.glob("*/*.png")):
        _save(masks.mask_path(masks.mask_root_for(split), image), mask)
    dataset = folder.ImageFolderDataset(split, with_masks=True, num_classes=2)
    assert dataset[1]["mask"].tolist() == [[0, 1], [2, 255]]
