"""Download the paper's data sets and convert them into the ImageFolder layout.

Output: ``<root>/<name>/<split>/<class>/<image>`` (docs/CONTRACTS.md §1):

- ``cifar10`` / ``cifar100``: train and test, one PNG per image (lossless, so the pixels are
  exactly those of the official python batches), named by the image's index in its split;
  class folders are the label names, which sort into the official label order so that
  ImageFolder class indices equal the CIFAR labels.
- ``SVHN``: the test split of the cropped-digits format (26,032 PNGs), class folders ``0``..``9``.
- ``Textures``: all 5,640 DTD images, copied byte for byte.
- ``Places``: the 10,000-image Places subset curated for MOS, copied byte for byte.
- ``TinyImageNet``: train (100,000) and the official val split (10,000, sorted into wnid folders) JPEGs
  copied byte for byte from the official zip, with ``classes.tsv``, ``train_boxes.csv`` and
  ``val_boxes.csv`` beside them (not the held-out "val" of unpack_shared_data.py --tin:
  datasets/tiny_imagenet.py).

Resuming: archives are downloaded to ``<name>.part`` and renamed only once complete, so a file
with the final name is never a truncated download. The images are written by
``datasets/imagefolder_writer.py``: atomically, an existing image is not written again, and
``<root>/<name>/.complete`` is written last; a data set that has it is skipped entirely. An
interrupted run therefore continues where it stopped.
"""
import functools
import hashlib
import http.client
import pickle
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from tqdm import tqdm

from datasets.imagefolder_writer import (IMAGE_EXTENSIONS, ImageFolderWriter, archive_images, complete_record,
                                         is_complete)
from datasets.tiny_imagenet import TIN_BOX_HEADER, TIN_NAME
from utils.base.io import write_text_atomic

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed; carries the URL and where the file was expected, for a manual download."""

    def __init__(self, url, destination, reason):
        self.url = url
        self.destination = Path(destination)
        super().__init__(
            f"could not download {url}\n  reason: {reason}\n"
            f"  download it by hand (browser, wget, curl) and save it as {self.destination}, "
            f"then run the same command again; the file found there is used as is.")


# ----------------------------------------------------------------------------- downloads

def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url, download_dir, filename=None, md5=None, progress=True, log=print):
    """Download `url` into `download_dir` unless a complete copy is already there; return its path.

    The data go to ``<filename>.part`` first (continued with an HTTP Range request when the
    server allows it) and are renamed only after the byte count matches Content-Length and,
    when `md5` is given, the checksum matches. A file under the final name is therefore
    complete; it is reused without touching the network, after an md5 check when `md5` is known
    (a mismatching file is downloaded again).
    """
    download_dir = Path(download_dir)
    destination = download_dir / (filename or PurePosixPath(urllib.parse.urlparse(url).path).name)
    if destination.is_file():
        if md5 is None or md5sum(destination) == md5:
            log(f"  using existing {destination}")
            return destination
        log(f"  {destination} has the wrong md5 checksum; downloading it again")
        destination.unlink()

    download_dir.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    log(f"  downloading {url} -> {destination}")
    try:
        _fetch_to_part(url, part, progress)
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise DownloadError(url, destination, error) from error
    if md5 is not None and (actual := md5sum(part)) != md5:
        part.unlink()
        raise DownloadError(url, destination, f"md5 checksum {actual} instead of {md5}")
    part.replace(destination)
    return destination


def _fetch_to_part(url, part, progress):
    """Write the body of `url` into `part`, continuing an earlier partial download if possible."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if offset and error.code == 416:  # the .part already holds the whole file (or more)
            part.unlink()
            return _fetch_to_part(url, part, progress)
        raise
    with response:
        # A server that ignores Range answers 200 with the whole body: start over then.
        resumed = offset > 0 and getattr(response, "status", None) == 206
        if not resumed:
            offset = 0
        remaining = response.headers.get("Content-Length")
        total = offset + int(remaining) if remaining is not None else None
        with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name[:-len(".part")], disable=not progress) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                bar.update(len(chunk))
    received = part.stat().st_size
    if total is not None and received != total:
        raise OSError(f"connection closed after {received} of {total} bytes "
                      f"(run again to continue from {part})")


# ----------------------------------------------------------------------------- helpers

def _check_file(path, what):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


# ----------------------------------------------------------------------------- CIFAR

_CIFAR_LAYOUT = {
    # which: (folder inside the archive, train members, test member, meta member, label key,
    #         label-names key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


def _field(record, key, source):
    """Value of `key` in an unpickled CIFAR dict (official files use bytes keys)."""
    for candidate in (key.encode(), key):
        if candidate in record:
            return record[candidate]
    raise ValueError(f"{source}: expected a key {key!r}, found {sorted(map(repr, record))}")


def _unpickle(tar, member_name, source):
    try:
        member = tar.getmember(member_name)
    except KeyError:
        raise ValueError(f"{source}: member {member_name!r} is missing") from None
    return pickle.load(tar.extractfile(member), encoding="bytes")


def _label_names(names, source):
    """Decode the label names and make sure sorting them keeps the label order (ImageFolder sorts)."""
    names = [name.decode() if isinstance(name, bytes) else str(name) for name in names]
    if names != sorted(names):
        raise ValueError(f"{source}: label names do not sort into label order, so ImageFolder "
                         f"indices would differ from the CIFAR labels: {names}")
    return names


def cifar_images(record, source):
    """Images uint8 [N, 32, 32, 3] of one unpickled CIFAR batch.

    Each row of ``data`` is 3072 bytes: the 1024 red, then green, then blue values, row-major.
    """
    data = np.asarray(_field(record, "data", source), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{source}: expected data of shape [N, 3072], got {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def convert_cifar(archive_path, out_root, which="cifar10", progress=False):
    """Convert the official CIFAR python tarball into ``<out_root>/<which>/{train,test}/<label>/``."""
    if which not in _CIFAR_LAYOUT:
        raise ValueError(f"which must be one of {sorted(_CIFAR_LAYOUT)}, got {which!r}")
    dataset_dir = Path(out_root) / which
    if is_complete(dataset_dir):
        return dataset_dir
    archive_path = _check_file(archive_path, f"{which} archive")
    folder, train_members, test_member, meta_member, label_key, names_key = _CIFAR_LAYOUT[which]
    source = archive_path.name
    writer = ImageFolderWriter(dataset_dir, archive_path)
    with tarfile.open(archive_path, "r:*") as tar:
        meta = _unpickle(tar, f"{folder}/{meta_member}", source)
        names = _label_names(_field(meta, names_key, source), source)
        for split, members in (("train", train_members), ("test", [test_member])):
            index = 0
            for member in members:
                record = _unpickle(tar, f"{folder}/{member}", f"{source}:{member}")
                images = cifar_images(record, f"{source}:{member}")
                labels = np.asarray(_field(record, label_key, source), dtype=np.int64)
                if labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= len(names):
                    raise ValueError(f"{source}:{member}: expected {len(images)} labels in "
                                     f"[0, {len(names)}), got shape {labels.shape}")
                for image, label in tqdm(zip(images, labels), total=len(images), disable=not progress,
                                         desc=f"{which} {split} {member}", unit="img"):
                    writer.png(split, names[label], f"{index:05d}.png", image)
                    index += 1
    return writer.finish()


# ----------------------------------------------------------------------------- SVHN

def convert_svhn(mat_path, out_root, progress=False):
    """Convert SVHN ``test_32x32.mat`` into ``<out_root>/SVHN/test/<digit>/<index>.png``.

    The file holds X uint8 [32, 32, 3, N] and y [N, 1] in 1..10, where 10 stands for digit 0.
    """
    import scipy.io

    dataset_dir = Path(out_root) / "SVHN"
    if is_complete(dataset_dir):
        return dataset_dir
    mat_path = _check_file(mat_path, "SVHN .mat file")
    contents = scipy.io.loadmat(mat_path)
    if "X" not in contents or "y" not in contents:
        raise ValueError(f"{mat_path}: expected variables 'X' and 'y'")
    images = np.asarray(contents["X"])
    labels = np.asarray(contents["y"]).reshape(-1).astype(np.int64)
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.dtype != np.uint8:
        raise ValueError(f"{mat_path}: expected X uint8 [32, 32, 3, N], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[3],) or labels.min() < 1 or labels.max() > 10:
        raise ValueError(f"{mat_path}: expected {images.shape[3]} labels in 1..10, got {labels.shape}")
    digits = labels % 10
    writer = ImageFolderWriter(dataset_dir, mat_path)
    for index in tqdm(range(len(digits)), disable=not progress, desc="SVHN test", unit="img"):
        writer.png("test", str(digits[index]), f"{index:05d}.png", images[:, :, :, index])
    return writer.finish()


# ----------------------------------------------------------------------------- DTD and Places

def _copy_archive_images(archive_path, out_root, name, what, place, missing_hint, progress):
    """Copy the images of a tarball to <out_root>/<name>/test/<class>/<file>, where
    place(parts of the member path) gives (class, file name), or None to skip the member."""
    dataset_dir = Path(out_root) / name
    if is_complete(dataset_dir):
        return dataset_dir
    archive_path = _check_file(archive_path, what)
    writer = ImageFolderWriter(dataset_dir, archive_path)
    for parts, stream in tqdm(archive_images(archive_path), disable=not progress, desc=name, unit="img"):
        target = place(parts)
        if target is not None:
            writer.copy("test", *target, stream)
    if not writer.expected:
        raise ValueError(f"{archive_path}: {missing_hint}")
    return writer.finish()


def convert_dtd(archive_path, out_root, progress=False):
    """Copy every DTD image (``.../images/<class>/<file>``) to ``<out_root>/Textures/test/<class>/``."""
    def place(parts):
        return (parts[-2], parts[-1]) if len(parts) >= 3 and parts[-3] == "images" else None
    return _copy_archive_images(archive_path, out_root, "Textures", "DTD archive", place,
                                "no images under images/<class>/ (is this the DTD tarball?)", progress)


def _places_class(parts, archive_path):
    """Class folder of a Places image: its folder below the archive's top folder, else 'images'."""
    if len(parts) <= 2:  # "x.jpg" or "Places/x.jpg": images directly in one folder
        return "images"
    if len(parts) == 3:  # "Places/<class>/x.jpg"
        return parts[1]
    raise ValueError(f"{archive_path}: unexpected nesting in {'/'.join(parts)!r}; expected "
                     f"<top>/<image> or <top>/<class>/<image>")


def convert_places(archive_path, out_root, progress=False):
    """Copy the MOS Places images to ``<out_root>/Places/test/<class or 'images'>/``."""
    return _copy_archive_images(archive_path, out_root, "Places", "Places archive",
                                lambda parts: (_places_class(parts, archive_path), parts[-1]),
                                "no images found", progress)


# ----------------------------------------------------------------------------- Tiny ImageNet



def _zip_members(zf, archive_path):
    """{path parts below the folder holding wnids.txt: ZipInfo} of the zip's files.

    The official zip keeps everything under ``tiny-imagenet-200/``; anchoring on wnids.txt also
    accepts a copy re-zipped without (or with another) top folder. Hidden files and macOS resource
    forks are skipped, names that climb out are refused, as for the tarballs.
    """
    files = {}
    for info in zf.infolist():
        parts = tuple(part for part in PurePosixPath(info.filename).parts if part not in ("/", "."))
        if info.is_dir() or not parts:
            continue
        if ".." in parts:
            raise ValueError(f"{archive_path}: refusing member {info.filename!r} (contains '..')")
        if not any(part.startswith(".") or part == "__MACOSX" for part in parts):
            files[parts] = info
    tops = sorted((parts[:-1] for parts in files if parts[-1] == "wnids.txt"), key=len)
    if not tops:
        raise ValueError(f"{archive_path}: no wnids.txt; expected the official tiny-imagenet-200.zip "
                         f"(tiny-imagenet-200/wnids.txt, words.txt, train/, val/)")
    top = tops[0]
    return {parts[len(top):]: info for parts, info in files.items() if parts[:len(top)] == top}


def _zip_lines(zf, members, parts, archive_path):
    """The non-empty lines of the text member `parts` (relative to the top folder)."""
    if parts not in members:
        raise ValueError(f"{archive_path}: {'/'.join(parts)} is missing")
    return [line for line in zf.read(members[parts]).decode().splitlines() if line.strip()]


def _tsv_fields(line, count, where):
    """The `count` tab-separated fields of `line`; `where` (file and line) names it in the error."""
    fields = line.split("\t")
    if len(fields) != count:
        raise ValueError(f"{where}: expected {count} tab-separated fields, got {line!r}")
    return fields


def _tin_box(fields, where):
    """x0, y0, x1, y1 as ints (inclusive pixel coordinates in the official files)."""
    try:
        return tuple(int(value) for value in fields)
    except ValueError:
        raise ValueError(f"{where}: expected integer box coordinates, got {fields}") from None


def _tin_classes(zf, members, archive_path):
    """{wnid: words} for the wnids of wnids.txt, sorted as ImageFolder sorts the class folders."""
    source = f"{archive_path}:wnids.txt"
    wnids = sorted(dict.fromkeys(line.strip() for line in _zip_lines(zf, members, ("wnids.txt",), archive_path)))
    bad = [wnid for wnid in wnids if "/" in wnid or wnid.startswith(".")]
    if bad:  # they become folder names
        raise ValueError(f"{source}: expected one wnid (e.g. n01443537) per line, got {bad[:3]}")
    # words.txt covers all 82,115 ImageNet synsets: read leniently, only the wnids used must be there
    lines = _zip_lines(zf, members, ("words.txt",), archive_path)
    words = dict(line.split("\t", 1) for line in lines if "\t" in line)
    missing = [wnid for wnid in wnids if wnid not in words]
    if missing:
        raise ValueError(f"{archive_path}:words.txt has no line for wnid(s) {missing[:5]} of wnids.txt")
    return {wnid: words[wnid] for wnid in wnids}


def _tin_train_boxes(zf, members, wnid, archive_path):
    """{file: box} of train/<wnid>/<wnid>_boxes.txt (lines ``file x0 y0 x1 y1``); {} without one."""
    parts = ("train", wnid, f"{wnid}_boxes.txt")
    if parts not in members:
        return {}
    boxes = {}
    for number, line in enumerate(_zip_lines(zf, members, parts, archive_path), 1):
        where = f"{archive_path}:{'/'.join(parts)} line {number}"
        fields = _tsv_fields(line, 5, where)
        boxes[fields[0]] = _tin_box(fields[1:], where)
    return boxes


def _tin_val_annotations(zf, members, classes, archive_path):
    """{file: (wnid, box)} of val/val_annotations.txt (lines ``file wnid x0 y0 x1 y1``)."""
    annotations = {}
    lines = _zip_lines(zf, members, ("val", "val_annotations.txt"), archive_path)
    for number, line in enumerate(lines, 1):
        where = f"{archive_path}:val/val_annotations.txt line {number}"
        fields = _tsv_fields(line, 6, where)
        if fields[1] not in classes:
            raise ValueError(f"{where}: {fields[0]} is labelled {fields[1]!r}, which wnids.txt does not list")
        annotations[fields[0]] = (fields[1], _tin_box(fields[2:], where))
    return annotations


def _tin_images(members, split):
    """(wnid or None, file name, ZipInfo) of the images of train/<wnid>/images/ or val/images/."""
    for parts, info in members.items():
        if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            continue
        if split == "train" and len(parts) == 4 and parts[0] == "train" and parts[2] == "images":
            yield parts[1], parts[3], info
        elif split == "val" and parts[:2] == ("val", "images") and len(parts) == 3:
            yield None, parts[2], info


def _boxes_csv(rows):
    lines = [",".join(TIN_BOX_HEADER)] + [",".join(map(str, row)) for row in rows]
    return "\n".join(lines) + "\n"


def _copy_tin_train(zf, members, classes, writer, archive_path, progress):
    """Copy train/<wnid>/images/<file> to train/<wnid>/<file>; returns the box rows of the copied
    images, the file relative to the set's folder, by wnid (class index order) and box-file order."""
    images = list(_tin_images(members, "train"))
    if not images:
        raise ValueError(f"{archive_path}: no images under train/<wnid>/images/ (is this tiny-imagenet-200.zip?)")
    unknown = sorted({wnid for wnid, _, _ in images} - set(classes))
    if unknown:
        raise ValueError(f"{archive_path}: train/{unknown[0]}/ is not a wnid of wnids.txt ({len(unknown)} such "
                         f"folder(s))")
    for wnid, filename, info in tqdm(images, disable=not progress, desc=f"{TIN_NAME} train", unit="img"):
        with zf.open(info) as stream:
            writer.copy("train", wnid, filename, stream)
    copied = {(wnid, filename) for wnid, filename, _ in images}
    return [(f"train/{wnid}/{filename}", wnid, *box) for wnid in classes
            for filename, box in _tin_train_boxes(zf, members, wnid, archive_path).items()
            if (wnid, filename) in copied]


def _copy_tin_val(zf, members, classes, writer, archive_path, progress):
    """Copy val/images/<file> to val/<wnid>/<file>, the wnid from val_annotations.txt (the official
    val folder is flat); returns the box rows of the copied images, by wnid and annotation order."""
    images = list(_tin_images(members, "val"))
    if not images:
        return []
    annotations = _tin_val_annotations(zf, members, classes, archive_path)
    for _, filename, info in tqdm(images, disable=not progress, desc=f"{TIN_NAME} val", unit="img"):
        if filename not in annotations:
            raise ValueError(f"{archive_path}: val/images/{filename} is not listed in val/val_annotations.txt")
        with zf.open(info) as stream:
            writer.copy("val", annotations[filename][0], filename, stream)
    copied = {filename for _, filename, _ in images}
    rows = [(f"val/{wnid}/{filename}", wnid, *box) for filename, (wnid, box) in annotations.items()
            if filename in copied]
    return sorted(rows, key=lambda row: row[1])  # stable: annotation order within a class


def convert_tiny_imagenet(archive_path, out_root, progress=False):
    """Convert the official ``tiny-imagenet-200.zip`` into ``<out_root>/TinyImageNet/{train,val}/<wnid>/``.

    The JPEGs are streamed out of the zip (never extracted as a whole) and copied byte for byte;
    val is the official validation split, its images sorted into their class folders by
    val_annotations.txt; the unlabelled test split is skipped. Beside the splits: classes.tsv (``wnid<TAB>words``), train_boxes.csv and
    val_boxes.csv (``file,wnid,x0,y0,x1,y1``, as in the shared tin_train.tar.gz).
    """
    dataset_dir = Path(out_root) / TIN_NAME
    if is_complete(dataset_dir):
        return dataset_dir
    archive_path = _check_file(archive_path, "Tiny ImageNet zip")
    writer = ImageFolderWriter(dataset_dir, archive_path)
    try:
        with zipfile.ZipFile(archive_path) as zf:
            members = _zip_members(zf, archive_path)
            classes = _tin_classes(zf, members, archive_path)
            rows = {"train": _copy_tin_train(zf, members, classes, writer, archive_path, progress),
                    "val": _copy_tin_val(zf, members, classes, writer, archive_path, progress)}
    except zipfile.BadZipFile as error:  # also a CRC mismatch found while copying a member
        raise ValueError(f"{archive_path}: not a readable zip archive ({error}); delete it and download it "
                         f"again") from error
    # the text files before the marker, so that a complete set always has them
    write_text_atomic(dataset_dir / "classes.tsv", "".join(f"{wnid}\t{text}\n" for wnid, text in classes.items()))
    for split, split_rows in rows.items():
        write_text_atomic(dataset_dir / f"{split}_boxes.csv", _boxes_csv(split_rows))
    return writer.finish()


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class DatasetSource:
    """Where a data set comes from and how its downloaded file becomes ImageFolder folders."""
    url: str
    convert: Callable  # convert(downloaded_file, out_root, progress=...) -> dataset folder
    counts: dict  # images per split in the official release, to flag an unexpected source
    md5: str | None = None

    @property
    def filename(self):
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name


DATASETS = {
    "cifar10": DatasetSource(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        functools.partial(convert_cifar, which="cifar10"), {"train": 50000, "test": 10000},
        md5="c58f30108f718f92721af3b95e74349a"),
    "cifar100": DatasetSource(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        functools.partial(convert_cifar, which="cifar100"), {"train": 50000, "test": 10000},
        md5="eb9058c3a382ffc7106e4002c42a8d85"),
    "SVHN": DatasetSource(
        "http://ufldl.stanford.edu/housenumbers/test_32x32.mat", convert_svhn, {"test": 26032}),
    "Textures": DatasetSource(
        "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz", convert_dtd,
        {"test": 5640}),
    "Places": DatasetSource(
        "http://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset/Places.tar.gz", convert_places,
        {"test": 10000}),
    TIN_NAME: DatasetSource(
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip", convert_tiny_imagenet,
        {"train": 100000, "val": 10000}),
}


# what prepare_data.py prepares by default: the paper's ID and OOD sets (Tiny ImageNet, for pretraining a
# stand-in of BiT's weights, only when named)
PAPER_DATASETS = ("cifar10", "cifar100", "SVHN", "Textures", "Places")


def resolve_names(names):
    """Registry names for `names` (case-insensitive); the paper's data sets when `names` is empty/None."""
    if not names:
        return list(PAPER_DATASETS)
    by_lower = {name.lower(): name for name in DATASETS}
    unknown = [name for name in names if name.lower() not in by_lower]
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}; known: {list(DATASETS)}")
    return list(dict.fromkeys(by_lower[name.lower()] for name in names))


def prepare(names, root, download_dir=None, keep_archives=True, progress=True, log=print):
    """Download (if needed) and convert the data sets `names` into `root`; return {name: folder}.

    Data sets whose folder already has the completion marker are skipped without downloading.
    Raises DownloadError (with the URL and the place to put a manual download) when a download
    fails.
    """
    root = Path(root)
    download_dir = Path(download_dir) if download_dir is not None else root / "downloads"
    prepared = {}
    for name in resolve_names(names):
        source = DATASETS[name]
        dataset_dir = root / name
        if is_complete(dataset_dir):
            log(f"{name}: already prepared in {dataset_dir}")
            prepared[name] = dataset_dir
            continue
        log(f"{name}: preparing in {dataset_dir}")
        archive = download(source.url, download_dir, source.filename, source.md5, progress, log)
        log(f"  converting {archive.name}")
        prepared[name] = source.convert(archive, root, progress=progress)
        counts = complete_record(dataset_dir)["images"]
        log(f"  done: {counts} images")
        if counts != source.counts:
            log(f"  note: the official release has {source.counts} images; check {archive}")
        if not keep_archives:
            archive.unlink()
            log(f"  deleted {archive}")
    return prepared
