"""The real image sets of scripts/reproduce_small.sh, unpacked from the shared tar archives
(``unpack_shared_data.py``).

Writes ``<out>/<ID>/{train,test}`` (``cifar10`` or ``cifar100``) and ``<out>/<OOD name>/test`` (ImageFolder), plus
``<out>/manifest.json``. The archives already hold the layout, ``<split>/<class>/<image>``; an OOD set is
the test split of its archive, or (TinyImageNet) the split and classes its OodSet names. Each
set is written by ``datasets/imagefolder_writer.py``, so an interrupted run continues where it
stopped and a complete set is not touched. A per-class limit keeps the first N images of every
class folder (archive order is sorted), for tiny test runs; None keeps every image.
"""
import json
import shutil
from pathlib import Path
from typing import NamedTuple, Optional

from datasets.imagefolder_writer import ImageFolderWriter, archive_images, archive_members, complete_record
from datasets.tin_cifar_overlap import CIFAR_OVERLAP
from datasets.tiny_imagenet import TIN_HELDOUT_EVERY, TIN_TRAIN_NAME
from utils.base.io import atomic_path, write_text_atomic

# ID set (folder name = the name eval.py reports) -> (archive, display name)
ID_SETS = {"cifar10": ("cifar10.tar", "CIFAR-10"), "cifar100": ("cifar100.tar", "CIFAR-100")}
DEFAULT_ID = "cifar10"


class OodSet(NamedTuple):
    archive: str
    content: str  # what it is
    stands_for: str  # the set of the paper or of OpenOOD it stands in for
    # "near" or "far": the group of OpenOOD v1.5's CIFAR benchmarks the set (or the one it stands for) is in:
    # near-OOD the other CIFAR and Tiny ImageNet, far-OOD MNIST, SVHN, Textures, Places365
    openood_group: str
    # in default_ood_sets: the default list is OpenOOD v1.5's composition, with our stand-ins
    default: bool = True
    # Where the images are in the archive, when the set is not the archive's whole test split (TinyImageNet):
    # the split folder read (written as the set's test split), the class folders left out, and how many
    # images of each class are kept (the first ones in archive order; None: all)
    split: str = "test"
    classes_left_out: frozenset = frozenset()
    per_class: Optional[int] = None


OPENOOD_GROUPS = ("near", "far")
TIN_OOD_PER_CLASS = 10  # images of each kept class in the OOD set TinyImageNet
# OOD folder name (= the name eval.py reports) -> its OodSet, in the order of the default list
# (default_ood_sets, also that of scripts/reproduce_small.sh): near-OOD, then far-OOD, as OpenOOD v1.5 lists them
OOD_SETS = {
    "CIFAR100": OodSet("cifar100.tar", "CIFAR-100 test split, 10,000 images of 100 classes, 32x32 JPEG encoded as "
                       "the CIFAR-10 copy is", "CIFAR-100 (the paper's near-OOD set for CIFAR-10 as ID)", "near"),
    "CIFAR10": OodSet("cifar10.tar", "CIFAR-10 test split, 10,000 images of 10 classes, 32x32 JPEG",
                      "CIFAR-10 (the near-OOD set of CIFAR-100 as ID)", "near"),
    "TinyImageNet": OodSet(
        "tin_train.tar", f"Tiny ImageNet's train split, the first {TIN_OOD_PER_CLASS} images (file-name order) of each "
        "of its 106 classes that are no CIFAR-10 or CIFAR-100 class (96 of 202 left out: "
        "datasets/tin_cifar_overlap.py), 1,060 images, 64x64 JPEG. A network trained from scratch never saw them, "
        "but PRESET=cpu_pretrained pretrains on this same train split, most of these very images included (8 of "
        "each class's 10; the other 2 are its held-out val images): for that preset its row is no OOD result",
        "Tiny ImageNet (OpenOOD v1.5's near-OOD set for CIFAR: its test images, without the classes that "
        "overlap CIFAR)", "near", split="train", classes_left_out=frozenset(CIFAR_OVERLAP),
        per_class=TIN_OOD_PER_CLASS),
    "MNIST": OodSet("mnist.tar", "MNIST digits, 3,000 test images, 28x28 grayscale",
                    "MNIST (OpenOOD v1.5's far-OOD set, whose test split has 10,000 images)", "far"),
    "SVHN": OodSet("svhn.tar", "SVHN cropped digits, the first 10,000 of the 26,032 test images, 32x32",
                   "SVHN (the paper's set is the whole test split, 26,032 images)", "far"),
    "Textures": OodSet("textures.tar", "DTD, 10 of its 47 classes (1,200 of 5,640 images), 64x64",
                       "Textures (DTD), but not the published set", "far"),
    "MiniPlaces": OodSet("miniplaces.tar", "MIT MiniPlaces (real Places2 photos): the first 50 val images of each "
                         "of its 100 scene categories, 5,000 images, 64x64 JPEG",
                         "Places365 (stand-in: real Places photos, but not OpenOOD's Places365 set)", "far"),
    "Scene15": OodSet("scene15.tar", "Scene-15 scene photos, 3,000 images",
                      "Places (an earlier stand-in: scenes, not Places365; MiniPlaces, real Places photos, replaced "
                      "it as the Places stand-in of the default list)", "far", default=False),
    "IntelScenes": OodSet("intel_scenes.tar", "Intel image classification scenes, 3,000 images",
                          "Places (an earlier second stand-in: scenes, not Places365; MiniPlaces, real Places "
                          "photos, replaced it as the Places stand-in of the default list)", "far", default=False),
}


def default_ood_sets(id_name):
    """The default OOD sets of ID set `id_name`: OpenOOD v1.5's composition (near-OOD: the other CIFAR,
    TinyImageNet; far-OOD: MNIST, SVHN, Textures, MiniPlaces), i.e. every OOD set marked default but the one
    cut from the ID set's own archive (CIFAR-10 as ID leaves out CIFAR10, and so on)."""
    return [name for name, ood in OOD_SETS.items() if ood.default and ood.archive != ID_SETS[id_name][0]]


# Tiny ImageNet's train split (an ImageNet stand-in for pretraining, scripts/pretrain.sh): images
# train/<wnid>/<wnid>_<i>.JPEG, plus the object box of each image and the class names. Images with
# i % TIN_HELDOUT_EVERY == 0 (10 of each class's 500, 2 %) are held out as the folder's val split (not the
# official val split: datasets/tiny_imagenet.py): never trained on, they give the pretraining's val top-1
# and are the held-out images whose CAMs are compared with their boxes.
TIN_ARCHIVE = "tin_train.tar"
TIN_METADATA = ("classes.tsv", "train_boxes.csv")


def unpack_set(archive, dataset_dir, per_class):
    """Unpack the splits named in `per_class` (split -> images per class, None = all) of `archive`
    into `dataset_dir`; returns the image count per split, in the order of `per_class`. A complete
    set is kept as is (and refused when it was unpacked with other limits)."""
    return unpack_placed(archive, dataset_dir, per_class,
                         lambda parts: parts if len(parts) == 3 and parts[0] in per_class else None,
                         "<split>/<class>/<image>")


def unpack_ood_set(ood, archive, dataset_dir, per_class):
    """The test split of the OOD set `ood` (an OodSet) from `archive` into `dataset_dir`: the class folders
    of the archive's ood.split but ood.classes_left_out, the first min(per_class, ood.per_class) images of
    each (None: no limit). Returns {"test": image count}."""
    cap = min((limit for limit in (per_class, ood.per_class) if limit is not None), default=None)
    cut = {}
    if ood.split != "test" or ood.classes_left_out:  # recorded only then: the markers of plain sets stay as they were
        cut = {"from_split": ood.split, "classes_left_out": sorted(ood.classes_left_out)}
    return unpack_placed(archive, dataset_dir, {"test": cap},
                         lambda parts: ("test", *parts[1:]) if len(parts) == 3 and parts[0] == ood.split
                         and parts[1] not in ood.classes_left_out else None,
                         f"{ood.split}/<class>/<image>", cut)


def unpack_placed(archive, dataset_dir, per_class, place, layout, settings=None):
    """Unpack the image members of `archive` that place(parts) puts at (split, class, file name) into
    `dataset_dir`, at most per_class[split] (None: all) from each class folder; `layout` names the members
    expected, for the error when a split gets none; `settings` are recorded beside per_class. Returns the
    image count per split, in the order of `per_class`; a complete set is kept as is (and refused when it
    was unpacked with other settings)."""
    settings = {"per_class": per_class, **(settings or {})}
    record = complete_record(dataset_dir, settings)
    if record is not None:
        return {split: record["images"][split] for split in per_class}
    writer = ImageFolderWriter(dataset_dir, archive, settings)
    copy_first_per_class(archive, writer, place, lambda target: per_class[target[0]])
    images = writer.images_per_split(per_class)
    empty = [split for split, count in images.items() if count == 0]
    if empty:
        raise ValueError(f"{archive}: no images for split(s) {empty}; expected {layout} members")
    writer.finish()
    return images


def copy_first_per_class(archive, writer, place, limit):
    """Copy the image members of `archive` that place(parts) puts somewhere (target: (split, class, file
    name), or None to leave the member out) through `writer`, at most limit(target) (None: all) from each
    folder of the archive; returns {archive folder: images copied}."""
    taken = {}
    for parts, stream in archive_images(archive):
        target = place(parts)
        if target is None:
            continue
        folder, cap = tuple(parts[:-1]), limit(target)
        if cap is not None and taken.get(folder, 0) >= cap:
            continue
        taken[folder] = taken.get(folder, 0) + 1
        writer.copy(*target, stream)
    return taken


def extract_files(archive, names, out_dir):
    """Copy the top-level non-image members `names` of `archive` into `out_dir` (atomically; kept when
    already there). A name the archive does not hold is an error."""
    wanted = [name for name in names if not (Path(out_dir) / name).is_file()]
    if wanted:
        for parts, stream in archive_members(archive, lambda parts: len(parts) == 1 and parts[0] in wanted):
            with atomic_path(Path(out_dir) / parts[0]) as tmp, open(tmp, "wb") as f:
                shutil.copyfileobj(stream, f)
            wanted.remove(parts[0])
    if wanted:
        raise ValueError(f"{archive}: no member(s) {wanted} at the top level")


def tin_split(filename):
    """The split of unpack_tin's folder that an image of Tiny ImageNet's train split goes to: 'val' for the
    held-out ones (number % TIN_HELDOUT_EVERY == 0), else 'train'."""
    index = Path(filename).stem.rpartition("_")[2]
    if not index.isdigit():
        raise ValueError(f"{filename}: expected a Tiny ImageNet file name <wnid>_<number>.JPEG")
    return "val" if int(index) % TIN_HELDOUT_EVERY == 0 else "train"


def unpack_tin(shared, out, per_class=None, log=print):
    """Tiny ImageNet's train split, `shared`/tin_train.tar(.gz), into `out`/tin/{train,val} (ImageFolder, a
    folder per wnid; val = the images of the train split that tin_split holds out, 2 %, not the official
    val split), with classes.tsv and train_boxes.csv beside them. per_class keeps the first N images of
    each class folder (archive order) before the split, for tiny test runs. Returns `out`/tin."""
    archive = find_archive(shared, TIN_ARCHIVE)
    if archive is None:
        raise FileNotFoundError(f"{Path(shared) / TIN_ARCHIVE} (or .gz) not found: set SHARED_DATA to the folder "
                                f"holding the shared archives")
    dataset_dir = Path(out) / TIN_TRAIN_NAME
    settings = {"per_class": per_class, "val_every": TIN_HELDOUT_EVERY}  # the key of folders already written
    record = complete_record(dataset_dir, settings)
    if record is not None:
        images = record["images"]
    else:
        writer = ImageFolderWriter(dataset_dir, archive, settings)
        taken = copy_first_per_class(
            archive, writer, lambda parts: (tin_split(parts[2]), *parts[1:]) if len(parts) == 3 and parts[0] == "train"
            else None, lambda target: per_class)
        if not taken:
            raise ValueError(f"{archive}: no images under train/<wnid>/")
        images = writer.images_per_split()
        writer.finish()
    extract_files(archive, TIN_METADATA, dataset_dir)
    log(f"{dataset_dir}: {images} from {archive}")
    return dataset_dir


def shared_archives():
    """Every archive of the shared folder that the project reads: the ID sets', the OOD sets' and Tiny ImageNet's."""
    return list(dict.fromkeys([archive for archive, _ in ID_SETS.values()] +
                              [ood.archive for ood in OOD_SETS.values()] + [TIN_ARCHIVE]))


def find_archive(shared, name):
    """<shared>/<name>, or its gzip-compressed copy <name>.gz (the shared tars shrink about 4x, which
    helps where a copy must travel with a size limit); None if neither exists."""
    for candidate in (Path(shared) / name, Path(shared) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def unpack_shared(shared, out, ood_names, train_per_class=None, test_per_class=None, ood_per_class=None,
                  log=print, id_name=DEFAULT_ID):
    """Unpack the ID set `id_name` (train and test) and the test split of every named OOD set whose
    archive is in `shared`; write <out>/manifest.json. Returns the OOD split folders that exist. The ID
    archive is required; a missing OOD archive is skipped; an OOD set cut from the ID archive is refused."""
    shared, out = Path(shared), Path(out)
    if id_name not in ID_SETS:
        raise ValueError(f"unknown ID set {id_name!r}; known: {', '.join(ID_SETS)}")
    unknown = [name for name in ood_names if name not in OOD_SETS]
    if unknown:
        raise ValueError(f"unknown OOD set(s) {unknown}; known: {', '.join(OOD_SETS)}")
    id_archive_name = ID_SETS[id_name][0]
    own = [name for name in ood_names if OOD_SETS[name].archive == id_archive_name]
    if own:
        raise ValueError(f"OOD set(s) {own} come from the ID set's own archive {id_archive_name}: with {id_name} as "
                         f"ID choose among {', '.join(default_ood_sets(id_name))}")
    id_archive = find_archive(shared, id_archive_name)
    if id_archive is None:
        raise FileNotFoundError(f"{shared / id_archive_name} (or .gz) not found: set SHARED_DATA to the folder "
                                f"holding the shared archives ({', '.join(shared_archives())})")
    manifest = {"shared": str(shared), "id": {}, "ood": {}}  # as given: relative to the checkout by default
    images = unpack_set(id_archive, out / id_name, {"train": train_per_class, "test": test_per_class})
    log(f"{out / id_name}: {images} from {id_archive}")
    manifest["id"][id_name] = {"archive": id_archive_name, "images": images}
    splits = []
    for name in ood_names:
        ood = OOD_SETS[name]
        path = find_archive(shared, ood.archive)
        if path is None:
            log(f"{shared / ood.archive} (or .gz) not found: OOD set {name} skipped")
            continue
        images = unpack_ood_set(ood, path, out / name, ood_per_class)
        log(f"{out / name}: {images} from {path}")
        manifest["ood"][name] = {"archive": ood.archive, "content": ood.content, "stands_for": ood.stands_for,
                                 "images": images}
        splits.append(out / name / "test")
    if ood_names and not splits:  # asked for OOD sets and found none
        raise FileNotFoundError(f"none of the OOD archives of {ood_names} is in {shared}")
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return splits
