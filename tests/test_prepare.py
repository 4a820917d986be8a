"""Tests of datasets/prepare.py on tiny fake sources in the real on-disk formats (no network)."""
import dataclasses
import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from datasets import prepare as prep
from datasets.imagefolder_writer import COMPLETE_MARKER

REPO = Path(__file__).resolve().parents[1]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _add_bytes(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _jpeg_bytes(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _read_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- CIFAR

def _cifar_batch(rng, n, num_classes, label_key):
    return {b"batch_label": b"fake", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(x) for x in rng.integers(0, num_classes, n)],
            b"filenames": [f"img{i}.png".encode() for i in range(n)]}


def _make_cifar10(path, rng):
    batches = {f"data_batch_{i}": _cifar_batch(rng, 3, 10, b"labels") for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(rng, 4, 10, b"labels")
    meta = {b"label_names": [name.encode() for name in CIFAR10_NAMES], b"num_cases_per_batch": 3}
    with tarfile.open(path, "w:gz") as tar:
        _add_bytes(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        for member, batch in batches.items():
            _add_bytes(tar, f"cifar-10-batches-py/{member}", pickle.dumps(batch, protocol=2))
        _add_bytes(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
    return batches


def _make_cifar100(path, rng, fine_names):
    train = _cifar_batch(rng, 7, len(fine_names), b"fine_labels")
    test = _cifar_batch(rng, 5, len(fine_names), b"fine_labels")
    for batch in (train, test):
        batch[b"coarse_labels"] = [0] * len(batch[b"fine_labels"])
    meta = {b"fine_label_names": [n.encode() for n in fine_names], b"coarse_label_names": [b"c"]}
    with tarfile.open(path, "w:gz") as tar:
        for member, record in (("meta", meta), ("train", train), ("test", test)):
            _add_bytes(tar, f"cifar-100-python/{member}", pickle.dumps(record, protocol=2))
    return train, test


def _independent_hwc(flat_row):
    """Pixel (y, x, c) of a CIFAR row is byte c*1024 + y*32 + x (channel planes, row-major)."""
    image = np.empty((32, 32, 3), np.uint8)
    for c in range(3):
        for y in range(32):
            image[y, :, c] = flat_row[c * 1024 + y * 32: c * 1024 + y * 32 + 32]
    return image


def test_cifar10_layout_and_exact_pixels(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    batches = _make_cifar10(archive, np.random.default_rng(0))
    out = prep.convert_cifar(archive, tmp_path / "out", which="cifar10")
    assert out == tmp_path / "out" / "cifar10"
    assert prep.is_complete(out)

    for split, members in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        data = np.concatenate([batches[m][b"data"] for m in members])
        labels = sum((batches[m][b"labels"] for m in members), [])
        expected = sorted(f"{split}/{CIFAR10_NAMES[label]}/{i:05d}.png" for i, label in enumerate(labels))
        assert _files(out / split) == sorted(p.split("/", 1)[1] for p in expected)
        for i, label in enumerate(labels):
            decoded = _read_png(out / split / CIFAR10_NAMES[label] / f"{i:05d}.png")
            np.testing.assert_array_equal(decoded, _independent_hwc(data[i]))


def test_cifar100_fine_labels(tmp_path):
    names = ["apple", "aquarium_fish", "baby", "bear", "beaver"]
    archive = tmp_path / "cifar-100-python.tar.gz"
    train, test = _make_cifar100(archive, np.random.default_rng(1), names)
    out = prep.convert_cifar(archive, tmp_path, which="cifar100")
    for split, record in (("train", train), ("test", test)):
        n = len(record[b"fine_labels"])
        assert len(_files(out / split)) == n
        for i, label in enumerate(record[b"fine_labels"]):
            decoded = _read_png(out / split / names[label] / f"{i:05d}.png")
            np.testing.assert_array_equal(decoded, _independent_hwc(record[b"data"][i]))
    # class folders, sorted as ImageFolder sorts them, give back the label order
    assert sorted(p.name for p in (out / "train").iterdir()) == [n for n in names if (out / "train" / n).is_dir()]


def test_cifar_refuses_names_that_do_not_sort_in_label_order(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    _make_cifar100(archive, np.random.default_rng(2), ["zebra", "apple"])
    with pytest.raises(ValueError, match="sort"):
        prep.convert_cifar(archive, tmp_path / "out", which="cifar100")
    assert not prep.is_complete(tmp_path / "out" / "cifar100")


def test_cifar_missing_member_is_named(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add_bytes(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": [b"a"]}))
    with pytest.raises(ValueError, match="data_batch_1"):
        prep.convert_cifar(archive, tmp_path / "out")


# ----------------------------------------------------------------------------- SVHN

def _make_svhn(path, rng, labels):
    images = rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
    scipy.io.savemat(path, {"X": images, "y": np.asarray(labels, np.uint8).reshape(-1, 1)})
    return images


def test_svhn_axis_order_and_digit_zero(tmp_path):
    labels = [10, 1, 5, 10, 9, 2]
    mat = tmp_path / "test_32x32.mat"
    images = _make_svhn(mat, np.random.default_rng(3), labels)
    out = prep.convert_svhn(mat, tmp_path)
    assert out == tmp_path / "SVHN"
    assert _files(out / "test") == sorted(["0/00000.png", "1/00001.png", "5/00002.png", "0/00003.png",
                                          "9/00004.png", "2/00005.png"])
    for i in range(len(labels)):
        digit = {10: 0}.get(labels[i], labels[i])
        decoded = _read_png(out / "test" / str(digit) / f"{i:05d}.png")
        np.testing.assert_array_equal(decoded, images[:, :, :, i])


def test_svhn_rejects_wrong_shape(tmp_path):
    mat = tmp_path / "bad.mat"
    scipy.io.savemat(mat, {"X": np.zeros((3, 32, 32, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(ValueError, match="bad.mat"):
        prep.convert_svhn(mat, tmp_path / "out")


# ----------------------------------------------------------------------------- DTD and Places

def _make_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            _add_bytes(tar, name, payload)


def test_dtd_copies_images_only(tmp_path):
    images = {f"dtd/images/{cls}/{cls}_{i:04d}.jpg": _jpeg_bytes(seed)
              for seed, (cls, i) in enumerate([("banded", 1), ("banded", 2), ("zigzagged", 7)])}
    extras = {"dtd/labels/train1.txt": b"banded/banded_0001.jpg\n", "dtd/imdb/imdb.mat": b"x",
              "dtd/images/waffled/.directory": b"[Dolphin]"}
    archive = tmp_path / "dtd-r1.0.1.tar.gz"
    _make_tar(archive, {**images, **extras})
    out = prep.convert_dtd(archive, tmp_path)
    assert _files(out / "test") == sorted(name[len("dtd/images/"):] for name in images)
    for name, payload in images.items():
        assert (out / "test" / name[len("dtd/images/"):]).read_bytes() == payload


@pytest.mark.parametrize("layout, expected", [
    ({"Places/images/a.jpg": 0, "Places/images/b.jpg": 1}, ["images/a.jpg", "images/b.jpg"]),
    ({"Places/a.jpg": 0, "Places/b.jpg": 1}, ["images/a.jpg", "images/b.jpg"]),
    ({"Places/beach/a.jpg": 0, "Places/forest/b.jpg": 1, "Places/._b.jpg": 2},
     ["beach/a.jpg", "forest/b.jpg"]),
])
def test_places_layouts(tmp_path, layout, expected):
    members = {name: _jpeg_bytes(seed) for name, seed in layout.items()}
    archive = tmp_path / "Places.tar.gz"
    _make_tar(archive, members)
    out = prep.convert_places(archive, tmp_path)
    assert _files(out / "test") == expected
    for name, payload in members.items():
        if not name.split("/")[-1].startswith("."):
            relative = next(e for e in expected if e.endswith("/" + name.split("/")[-1]))
            assert (out / "test" / relative).read_bytes() == payload


def test_places_rejects_deep_nesting(tmp_path):
    archive = tmp_path / "Places.tar.gz"
    _make_tar(archive, {"Places/a/b/c.jpg": _jpeg_bytes(0)})
    with pytest.raises(ValueError, match="nesting"):
        prep.convert_places(archive, tmp_path / "out")


def test_tar_member_climbing_out_is_refused(tmp_path):
    archive = tmp_path / "Places.tar.gz"
    _make_tar(archive, {"Places/../../evil.jpg": _jpeg_bytes(0)})
    with pytest.raises(ValueError, match=r"\.\."):
        prep.convert_places(archive, tmp_path / "out")
    assert not (tmp_path.parent / "evil.jpg").exists()


# ----------------------------------------------------------------------------- Tiny ImageNet

TIN_WNIDS = ["n02124075", "n01443537", "n09193705"]  # wnids.txt is not sorted in the official zip
TIN_WORDS = {"n01443537": "goldfish, Carassius auratus", "n02124075": "Egyptian cat", "n09193705": "alp",
             "n00001740": "entity"}


def _make_tiny_imagenet(path, val_wnid=None):
    """A tiny-imagenet-200.zip in the official layout: 4 train images per class (the last without a
    box), 2 val images per class, one test image. Returns {(split, wnid, file): bytes} and the boxes."""
    images, boxes, seed = {}, {}, 0
    members = {"tiny-imagenet-200/wnids.txt": "\n".join(TIN_WNIDS) + "\n",
               "tiny-imagenet-200/words.txt": "".join(f"{w}\t{t}\n" for w, t in TIN_WORDS.items())}
    annotations = []
    for wnid in TIN_WNIDS:
        lines = []
        for i in range(4):
            seed += 1
            name = f"{wnid}_{i}.JPEG"
            images[("train", wnid, name)] = _jpeg_bytes(seed)
            members[f"tiny-imagenet-200/train/{wnid}/images/{name}"] = images[("train", wnid, name)]
            if i < 3:
                boxes[f"train/{wnid}/{name}"] = (i, seed, 40 + i, 50)
                lines.append(f"{name}\t{i}\t{seed}\t{40 + i}\t50\n")
        members[f"tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt"] = "".join(lines)
        for _ in range(2):
            seed += 1
            name = f"val_{len(annotations)}.JPEG"
            images[("val", wnid, name)] = _jpeg_bytes(seed)
            members[f"tiny-imagenet-200/val/images/{name}"] = images[("val", wnid, name)]
            annotations.append(f"{name}\t{val_wnid or wnid}\t1\t2\t{seed}\t60\n")
            boxes[f"val/{wnid}/{name}"] = (1, 2, seed, 60)
    members["tiny-imagenet-200/val/val_annotations.txt"] = "".join(annotations)
    members["tiny-imagenet-200/test/images/test_0.JPEG"] = _jpeg_bytes(99)
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return images, boxes


def test_tiny_imagenet_from_a_zip_placed_by_hand(tmp_path):
    downloads = tmp_path / "manual"
    downloads.mkdir()
    images, boxes = _make_tiny_imagenet(downloads / "tiny-imagenet-200.zip")
    root = tmp_path / "dataset"
    messages = []
    result = prep.prepare(["TinyImageNet"], root, download_dir=downloads, progress=False, log=messages.append)
    out = root / "TinyImageNet"
    assert result == {"TinyImageNet": out}
    for split in ("train", "val"):
        assert _files(out / split) == sorted(f"{w}/{f}" for s, w, f in images if s == split)
    for (split, wnid, name), payload in images.items():
        assert (out / split / wnid / name).read_bytes() == payload
    assert not (out / "test").exists()
    assert (out / "classes.tsv").read_text() == "".join(f"{w}\t{TIN_WORDS[w]}\n" for w in sorted(TIN_WNIDS))
    for split in ("train", "val"):
        rows = (out / f"{split}_boxes.csv").read_text().splitlines()
        assert rows[0] == "file,wnid,x0,y0,x1,y1"
        expected = sorted((f, f.split("/")[1], *box) for f, box in boxes.items() if f.startswith(split))
        assert rows[1:] == [",".join(map(str, row)) for row in expected]
        assert len(rows) == 1 + {"train": 9, "val": 6}[split]  # the train images without a box have no row

    (downloads / "tiny-imagenet-200.zip").unlink()  # a complete set does not even look for its source
    messages.clear()
    prep.prepare(["tinyimagenet"], root, download_dir=downloads, progress=False, log=messages.append)
    assert messages == [f"TinyImageNet: already prepared in {out}"]


@pytest.mark.parametrize("damage, message", [
    ("unknown val wnid", r"val_annotations\.txt line 1: val_0\.JPEG is labelled 'n99999999'"),
    ("unlisted val image", r"val/images/val_9\.JPEG is not listed in val/val_annotations\.txt"),
    ("no train folders", r"no images under train/<wnid>/images/"),
    ("not a zip", r"tiny-imagenet-200\.zip: not a readable zip archive"),
])
def test_tiny_imagenet_errors_name_the_file(tmp_path, damage, message):
    archive = tmp_path / "tiny-imagenet-200.zip"
    _make_tiny_imagenet(archive, val_wnid="n99999999" if damage == "unknown val wnid" else None)
    if damage == "unlisted val image":
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr("tiny-imagenet-200/val/images/val_9.JPEG", _jpeg_bytes(0))
    elif damage == "no train folders":
        with zipfile.ZipFile(archive) as zf:
            kept = {info.filename: zf.read(info) for info in zf.infolist() if "/train/" not in info.filename}
        with zipfile.ZipFile(archive, "w") as zf:
            for name, payload in kept.items():
                zf.writestr(name, payload)
    elif damage == "not a zip":
        archive.write_bytes(archive.read_bytes()[:100])  # a truncated download
    with pytest.raises(ValueError, match=message):
        prep.convert_tiny_imagenet(archive, tmp_path / "out")
    assert not prep.is_complete(tmp_path / "out" / "TinyImageNet")


# ----------------------------------------------------------------------------- resuming

def test_rerun_skips_a_completed_set(tmp_path):
    mat = tmp_path / "test_32x32.mat"
    _make_svhn(mat, np.random.default_rng(4), [1, 2, 3])
    out = prep.convert_svhn(mat, tmp_path / "out")
    (out / "test" / "1" / "00000.png").unlink()
    mat.unlink()  # a skipped set does not even open its source
    assert prep.convert_svhn(mat, tmp_path / "out") == out
    assert not (out / "test" / "1" / "00000.png").exists()


def test_interrupted_conversion_is_continued(tmp_path):
    mat = tmp_path / "test_32x32.mat"
    images = _make_svhn(mat, np.random.default_rng(5), [1, 2, 3])
    out = prep.convert_svhn(mat, tmp_path / "out")
    # simulate a run killed midway: no marker, one image missing, one temporary left behind
    (out / COMPLETE_MARKER).unlink()
    (out / "test" / "2" / "00001.png").unlink()
    stale = out / "test" / "3" / ".00002.abc123.tmp.png"
    stale.write_bytes(b"half")
    stale_marker = out / "..complete.def456.tmp"  # a temporary without a suffix (the marker's)
    stale_marker.write_bytes(b"{")
    prep.convert_svhn(mat, tmp_path / "out")
    assert prep.is_complete(out)
    assert not stale.exists() and not stale_marker.exists()
    np.testing.assert_array_equal(_read_png(out / "test" / "2" / "00001.png"), images[:, :, :, 1])


def test_foreign_files_in_an_unfinished_folder_are_reported(tmp_path):
    mat = tmp_path / "test_32x32.mat"
    _make_svhn(mat, np.random.default_rng(6), [1, 2])
    foreign = tmp_path / "out" / "SVHN" / "test" / "1" / "0001.jpg"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"x")
    with pytest.raises(ValueError, match="0001.jpg"):
        prep.convert_svhn(mat, tmp_path / "out")
    assert not prep.is_complete(tmp_path / "out" / "SVHN")


# ----------------------------------------------------------------------------- downloads

def test_download_via_part_file_then_skip(tmp_path):
    source = tmp_path / "src" / "archive.bin"
    source.parent.mkdir()
    payload = np.random.default_rng(7).bytes(3 * 1024 * 1024 + 17)
    source.write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "archive.bin.part").write_bytes(b"stale bytes from an older attempt")

    path = prep.download(source.as_uri(), downloads, md5=md5, progress=False, log=lambda _: None)
    assert path == downloads / "archive.bin"
    assert path.read_bytes() == payload
    assert not (downloads / "archive.bin.part").exists()

    source.unlink()  # a complete file is reused without fetching anything
    assert prep.download(source.as_uri(), downloads, md5=md5, progress=False, log=lambda _: None) == path


class _RangeServer:
    """Stands in for urlopen: serves `payload`, honouring "Range: bytes=N-" with a 206 answer."""

    def __init__(self, payload):
        self.payload = payload
        self.ranges = []

    def __call__(self, request, timeout=None):
        first = int(request.get_header("Range", "bytes=0-")[len("bytes="):-1])
        self.ranges.append(first)
        body = io.BytesIO(self.payload[first:])
        body.status = 206 if first else 200
        body.headers = {"Content-Length": str(len(self.payload) - first)}
        return body


def test_download_continues_a_part_file_with_a_range_request(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 40
    server = _RangeServer(payload)
    monkeypatch.setattr(prep.urllib.request, "urlopen", server)
    downloads = tmp_path / "dl"
    downloads.mkdir()
    (downloads / "a.bin.part").write_bytes(payload[:1000])
    path = prep.download("https://example.invalid/a.bin", downloads, progress=False, log=lambda _: None)
    assert server.ranges == [1000]
    assert path.read_bytes() == payload


def test_download_replaces_a_file_with_the_wrong_checksum(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"the real archive")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "archive.bin").write_bytes(b"corrupt")
    md5 = hashlib.md5(b"the real archive").hexdigest()
    path = prep.download(source.as_uri(), downloads, md5=md5, progress=False, log=lambda _: None)
    assert path.read_bytes() == b"the real archive"


def test_download_with_wrong_checksum_keeps_no_file(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"tampered")
    with pytest.raises(prep.DownloadError, match="md5"):
        prep.download(source.as_uri(), tmp_path / "dl", md5="0" * 32, progress=False, log=lambda _: None)
    assert list((tmp_path / "dl").iterdir()) == []


def test_download_failure_names_url_and_destination(tmp_path):
    url = (tmp_path / "missing.tar.gz").as_uri()
    with pytest.raises(prep.DownloadError) as info:
        prep.download(url, tmp_path / "dl", progress=False, log=lambda _: None)
    message = str(info.value)
    assert url in message and str(tmp_path / "dl" / "missing.tar.gz") in message


# ----------------------------------------------------------------------------- prepare / CLI

def test_prepare_downloads_converts_and_skips(tmp_path, monkeypatch):
    mat = tmp_path / "src" / "test_32x32.mat"
    mat.parent.mkdir()
    images = _make_svhn(mat, np.random.default_rng(8), [10, 4])
    monkeypatch.setitem(prep.DATASETS, "SVHN", dataclasses.replace(prep.DATASETS["SVHN"], url=mat.as_uri()))
    messages = []
    root = tmp_path / "dataset"
    result = prep.prepare(["svhn"], root, keep_archives=False, progress=False, log=messages.append)
    assert result == {"SVHN": root / "SVHN"}
    np.testing.assert_array_equal(_read_png(root / "SVHN" / "test" / "0" / "00000.png"), images[..., 0])
    assert not (root / "downloads" / "test_32x32.mat").exists()  # keep_archives=False
    assert any("26032" in m for m in messages)  # the count differs from the official release

    mat.unlink()
    messages.clear()
    prep.prepare(["SVHN"], root, progress=False, log=messages.append)
    assert messages == [f"SVHN: already prepared in {root / 'SVHN'}"]


def test_prepare_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="imagenet"):
        prep.prepare(["imagenet"], tmp_path, progress=False, log=lambda _: None)


def test_cli_uses_a_file_placed_by_hand(tmp_path):
    downloads = tmp_path / "manual"
    downloads.mkdir()
    _make_tar(downloads / "Places.tar.gz", {"Places/images/a.jpg": _jpeg_bytes(0)})
    result = subprocess.run(
        [sys.executable, "prepare_data.py", "--root", str(tmp_path / "dataset"), "--datasets", "Places",
         "--download-dir", str(downloads), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dataset" / "Places" / "test" / "images" / "a.jpg").is_file()
    assert str(tmp_path / "dataset" / "Places") in result.stdout
