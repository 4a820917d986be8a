"""The real image sets of scripts/reproduce_small.sh, unpacked from the shared tar archives.

    python -m bench.reproduce_data --shared ../shared/data --out dataset/reproduce_small/full

Writes <out>/cifar10/{train,test} and <out>/<OOD name>/test (ImageFolder), plus
<out>/manifest.json, and prints the OOD split folders, one per line (log lines go to stderr).
Each set is unpacked into a temporary folder and renamed into place when complete, so an
interrupted run never leaves a half set behind, and a set already in place is not touched.
--*_per_class keep the first N images of every class folder (archive order is sorted), for
tiny test runs; left out, every image is kept.
"""
import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

from utils.io import write_text_atomic

ID_NAME = "cifar10"
ID_ARCHIVE = "cifar10.tar"
# OOD folder name (= the name eval.py reports) -> (archive, what it is, what it stands in for)
OOD_SETS = {
    "Textures": ("textures.tar", "DTD, 10 of its 47 classes (1,200 of 5,640 images), 64x64",
                 "Textures (DTD), but not the published set"),
    "MNIST": ("mnist.tar", "MNIST digits, 3,000 test images, 28x28 grayscale",
              "SVHN (stand-in: digits, but handwritten and grayscale, not house numbers)"),
    "Scene15": ("scene15.tar", "Scene-15 scene photos, 3,000 images",
                "Places (stand-in: scenes, not Places365)"),
    "IntelScenes": ("intel_scenes.tar", "Intel image classification scenes, 3,000 images",
                    "Places (second stand-in: scenes, not Places365)"),
}
COMPLETE = ".complete"


def log(message):
    print(f"[data] {message}", file=sys.stderr)


def pick_members(tar, splits, per_class):
    """Image members of `tar` in the given splits; the first per_class[split] of each class folder
    (None: all)."""
    taken = {}
    for member in tar:
        parts = Path(member.name).parts
        if not member.isfile() or len(parts) != 3 or parts[0] not in splits:
            continue
        limit = per_class.get(parts[0])
        folder = parts[:2]
        if limit is not None and taken.get(folder, 0) >= limit:
            continue
        taken[folder] = taken.get(folder, 0) + 1
        yield member


def count_images(folder, splits):
    return {split: sum(1 for path in (folder / split).rglob("*") if path.is_file()) for split in splits}


def extract_set(archive, target, per_class):
    """Unpack the splits named in `per_class` (split -> images per class, None = all) of `archive`
    into `target`, atomically; returns the image count per split. A complete set is kept as is."""
    target = Path(target)
    marker = target / COMPLETE
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded["per_class"] != per_class:
            raise ValueError(f"{target} was unpacked with per-class limits {recorded['per_class']}, not "
                             f"{per_class}: delete it, or write to another --out")
        return recorded["images"]
    if target.exists():
        raise FileExistsError(f"{target} exists but has no {COMPLETE} marker, so it was not written by this "
                              f"tool (or by an older version): delete it and rerun")
    partial = target.parent / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    partial.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        for member in pick_members(tar, set(per_class), per_class):
            tar.extract(member, partial, filter="data")
    images = count_images(partial, per_class)
    empty = [split for split, count in images.items() if count == 0]
    if empty:
        raise ValueError(f"{archive}: no images under split(s) {empty}; expected <split>/<class>/<image> members")
    write_text_atomic(partial / COMPLETE, json.dumps({"archive": str(archive), "per_class": per_class,
                                                      "images": images}, indent=2) + "\n")
    partial.rename(target)
    return images


def find_archive(shared, name):
    """<shared>/<name>, or its gzip-compressed copy <name>.gz (the shared tars shrink about 4x, which
    helps where a copy must travel with a size limit); None if neither exists."""
    for candidate in (Path(shared) / name, Path(shared) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def prepare(shared, out, ood_names, train_per_class=None, test_per_class=None, ood_per_class=None):
    """Unpack CIFAR-10 and every named OOD set whose archive is in `shared`; write <out>/manifest.json.
    Returns the OOD split folders that exist. CIFAR-10 is required; a missing OOD archive is skipped."""
    shared, out = Path(shared), Path(out)
    unknown = [name for name in ood_names if name not in OOD_SETS]
    if unknown:
        raise ValueError(f"unknown OOD set(s) {unknown}; known: {', '.join(OOD_SETS)}")
    id_archive = find_archive(shared, ID_ARCHIVE)
    if id_archive is None:
        raise FileNotFoundError(f"{shared / ID_ARCHIVE} (or .gz) not found: set SHARED_DATA to the folder holding "
                                f"the shared archives ({ID_ARCHIVE}, {', '.join(a for a, _, _ in OOD_SETS.values())})")
    manifest = {"shared": str(shared.resolve()), "id": {}, "ood": {}}
    images = extract_set(id_archive, out / ID_NAME, {"train": train_per_class, "test": test_per_class})
    log(f"{out / ID_NAME}: {images} from {id_archive}")
    manifest["id"][ID_NAME] = {"archive": ID_ARCHIVE, "images": images}
    splits = []
    for name in ood_names:
        archive, content, stands_for = OOD_SETS[name]
        path = find_archive(shared, archive)
        if path is None:
            log(f"{shared / archive} (or .gz) not found: OOD set {name} skipped")
            continue
        images = extract_set(path, out / name, {"test": ood_per_class})
        log(f"{out / name}: {images} from {path}")
        manifest["ood"][name] = {"archive": archive, "content": content, "stands_for": stands_for,
                                 "images": images}
        splits.append(out / name / "test")
    if ood_names and not splits:  # asked for OOD sets and found none
        raise FileNotFoundError(f"none of the OOD archives of {ood_names} is in {shared}")
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return splits


def optional_count(text):
    """'' (unset environment variable) -> None, i.e. every image."""
    if text == "":
        return None
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of images per class or '', got {text}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", required=True, help="folder with the shared archives (cifar10.tar, ...)")
    parser.add_argument("--out", required=True, help="where the ImageFolder sets are unpacked")
    parser.add_argument("--ood", nargs="*", default=list(OOD_SETS), help="OOD sets (default: all; none: CIFAR-10 only)")
    for split in ("train", "test", "ood"):
        parser.add_argument(f"--{split}_per_class", type=optional_count, default=None,
                            help="keep the first N images per class ('' or left out: all)")
    args = parser.parse_args(argv)
    splits = prepare(args.shared, args.out, args.ood, args.train_per_class, args.test_per_class, args.ood_per_class)
    print("\n".join(str(split) for split in splits))


if __name__ == "__main__":
    main()
