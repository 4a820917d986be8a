"""The OOD sets of the default list (datasets/shared_archives.py): OpenOOD v1.5's CIFAR composition with our
stand-ins, MiniPlaces for Places365 and TinyImageNet cut from Tiny ImageNet's train split without the classes
that overlap CIFAR (datasets/tin_cifar_overlap.py), on small fake archives and on the shared archives."""
import io
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

import unpack_shared_data
from datasets import shared_archives
from datasets.folder import ImageFolderDataset
from datasets.shared_archives import OOD_SETS, TIN_OOD_PER_CLASS, default_ood_sets, find_archive, unpack_shared
from datasets.tin_cifar_overlap import CIFAR_OVERLAP
from datasets.tiny_imagenet import TIN_HELDOUT_EVERY

KEPT_WNID, LEFT_OUT_WNID = "n01768244", "n02123045"  # trilobite, tabby cat
# CIFAR-10's names and their obvious synonyms, none of which a kept class may be called
CIFAR10_WORDS = {
    "airplane": {"airplane", "aeroplane", "plane", "aircraft", "airliner", "jet"},
    "automobile": {"automobile", "car", "auto", "sedan", "taxi", "cab", "limousine", "limo", "wagon", "convertible"},
    "bird": {"bird", "goose", "duck", "penguin", "stork", "albatross", "eagle", "owl", "ostrich", "parrot"},
    "cat": {"cat", "kitten", "kitty", "tabby", "cougar", "puma", "lion", "tiger", "leopard", "panther"},
    "deer": {"deer", "elk", "moose", "stag", "fawn", "reindeer", "antelope", "gazelle"},
    "dog": {"dog", "puppy", "hound", "terrier", "retriever", "poodle", "shepherd", "chihuahua"},
    "frog": {"frog", "toad", "bullfrog"},
    "horse": {"horse", "pony", "foal", "stallion", "mare"},
    "ship": {"ship", "boat", "lifeboat", "gondola", "ferry", "yacht", "canoe", "liner", "schooner"},
    "truck": {"truck", "lorry", "van", "pickup"},
}
# kept classes whose words hold a CIFAR-100 name in another sense
CIFAR100_NAME_IN_ANOTHER_SENSE = {"n02268443": "snake",  # dragonfly, folk-named "snake feeder", "snake doctor"
                                  "n02321529": "sea"}  # sea cucumber, an animal, not the scene


def jpeg(seed, mode="RGB"):
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG")
    return buffer.getvalue()


def add_member(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_tin(path, wnids=(KEPT_WNID, LEFT_OUT_WNID), images=12):
    """A fake tin_train.tar.gz laid out as the shared one (sorted members: classes.tsv, train/<wnid>/<wnid>_<i>.JPEG,
    train_boxes.csv); each class's image 3 is greyscale. Returns {member name: bytes} of the images."""
    files = {f"train/{w}/{w}_{i}.JPEG": jpeg(i, "L" if i == 3 else "RGB") for w in wnids for i in range(images)}
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "classes.tsv", "".join(f"{w}\tthing {w}\n" for w in wnids).encode())
        for name in sorted(files):
            add_member(tar, name, files[name])
        add_member(tar, "train_boxes.csv", b"file,wnid,x0,y0,x1,y1\n")
    return files


def write_image_tar(path, names):
    with tarfile.open(path, "w") as tar:
        for index, name in enumerate(names):
            add_member(tar, name, jpeg(index))
    return path


def written(folder):
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
                  and not path.name.startswith("."))


def test_the_default_lists_are_openood_v15s_composition():
    assert default_ood_sets("cifar10") == ["CIFAR100", "TinyImageNet", "MNIST", "SVHN", "Textures", "MiniPlaces"]
    assert default_ood_sets("cifar100") == ["CIFAR10", "TinyImageNet", "MNIST", "SVHN", "Textures", "MiniPlaces"]
    groups = {name: OOD_SETS[name].openood_group for name in default_ood_sets("cifar10")}
    assert [name for name, group in groups.items() if group == "near"] == ["CIFAR100", "TinyImageNet"]
    for earlier in ("Scene15", "IntelScenes"):  # known, selectable with --ood, but no longer in the default list
        assert not OOD_SETS[earlier].default and "MiniPlaces" in OOD_SETS[earlier].stands_for
    assert "Places365" in OOD_SETS["MiniPlaces"].stands_for and OOD_SETS["MiniPlaces"].openood_group == "far"
    tin = OOD_SETS["TinyImageNet"].content
    assert "never saw" in tin and "PRESET=cpu_pretrained pretrains on this same train split" in tin
    # both new archives are among those the real-image tests require (CI fails without them)
    assert {"miniplaces.tar", "tin_train.tar"} <= set(shared_archives.shared_archives())


def test_tinyimagenet_keeps_the_first_images_of_each_class_that_is_no_cifar_class(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    files = write_tin(shared / "tin_train.tar.gz")
    out = tmp_path / "data" / "TinyImageNet"

    tin = shared / "tin_train.tar.gz"
    assert shared_archives.unpack_ood_set(OOD_SETS["TinyImageNet"], tin, out, None) == {"test": TIN_OOD_PER_CLASS}

    # file-name order, as the archive's: _0, _1, _10, _11, _2, ...; the CIFAR class (a tabby cat) is left out
    first = sorted(name for name in files if f"/{KEPT_WNID}/" in name)[:TIN_OOD_PER_CLASS]
    assert written(out) == [name.replace("train/", "test/", 1) for name in first]
    assert all((out / name.replace("train/", "test/", 1)).read_bytes() == files[name] for name in first)
    # eval.py reads it as an image folder; the greyscale image (number 3) comes out RGB
    dataset = ImageFolderDataset(out / "test")
    assert dataset.classes == [KEPT_WNID]
    assert {tuple(dataset[i]["image"].shape) for i in range(len(dataset))} == {(3, 8, 8)}
    # a complete set is kept; other limits are refused
    assert shared_archives.unpack_ood_set(OOD_SETS["TinyImageNet"], tin, out, None) == {"test": TIN_OOD_PER_CLASS}
    with pytest.raises(ValueError, match="per_class"):
        shared_archives.unpack_ood_set(OOD_SETS["TinyImageNet"], tin, out, 3)


def test_a_smaller_per_class_limit_wins_and_an_archive_without_kept_classes_is_refused(tmp_path):
    write_tin(tmp_path / "tin_train.tar.gz")
    counts = shared_archives.unpack_ood_set(OOD_SETS["TinyImageNet"], tmp_path / "tin_train.tar.gz",
                                            tmp_path / "small", 2)
    assert counts == {"test": 2} and written(tmp_path / "small") == [f"test/{KEPT_WNID}/{KEPT_WNID}_{i}.JPEG"
                                                                     for i in (0, 1)]
    (tmp_path / "cats").mkdir()
    write_tin(tmp_path / "cats" / "tin_train.tar.gz", wnids=(LEFT_OUT_WNID,))
    with pytest.raises(ValueError, match=r"no images for split\(s\) \['test'\]; expected train/<class>/<image>"):
        shared_archives.unpack_ood_set(OOD_SETS["TinyImageNet"], tmp_path / "cats" / "tin_train.tar.gz",
                                       tmp_path / "none", None)


def test_the_cli_unpacks_tinyimagenet_and_miniplaces_by_default_and_the_scene_sets_when_named(tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    write_image_tar(shared / "cifar10.tar", [f"{split}/c{k}/{i}.jpg" for split in ("train", "test") for k in range(2)
                                             for i in range(2)])
    write_image_tar(shared / "miniplaces.tar", [f"test/{place}/{i:08d}.jpg" for place in ("abbey", "bakery")
                                                for i in range(3)])
    write_image_tar(shared / "scene15.tar", ["test/kitchen/0.jpg"])
    write_tin(shared / "tin_train.tar.gz", images=3)
    data = tmp_path / "data"

    unpack_shared_data.main(["--shared", str(shared), "--out", str(data), "--ood_per_class", "2"])

    # the default sets whose archive is here, in the default order; Scene15 is not among them
    printed = capsys.readouterr().out.split()
    assert printed == [str(data / name / "test") for name in ("TinyImageNet", "MiniPlaces")]
    assert written(data / "MiniPlaces") == [f"test/{place}/{i:08d}.jpg" for place in ("abbey", "bakery")
                                            for i in range(2)]
    assert written(data / "TinyImageNet") == [f"test/{KEPT_WNID}/{KEPT_WNID}_{i}.JPEG" for i in (0, 1)]
    assert not (data / "Scene15").exists()
    assert unpack_shared(shared, data, ["Scene15"], log=lambda _: None) == [data / "Scene15" / "test"]


def tin_classes(archive):
    """{wnid: words} of the archive's classes.tsv, its first member: read without streaming the images."""
    with tarfile.open(archive, "r|*") as tar:
        for member in tar:
            if member.name == "classes.tsv":
                return dict(line.split("\t") for line in tar.extractfile(member).read().decode().splitlines())
    raise AssertionError(f"{archive}: no classes.tsv")


def class_names(archive):
    with tarfile.open(archive, "r|*") as tar:
        return {member.name.split("/")[1] for member in tar if member.name.startswith("test/")}


def words_of(text):
    return " " + re.sub(r"[^a-z]+", " ", text.lower()) + " "


def test_no_kept_tiny_imagenet_class_is_a_cifar_class(shared_data, tmp_path):
    shared = shared_data
    classes = tin_classes(find_archive(shared, "tin_train.tar"))
    assert len(classes) == 202 and set(CIFAR_OVERLAP) <= set(classes)  # every wnid left out is a class of the archive
    kept = {wnid: words_of(words) for wnid, words in classes.items() if wnid not in CIFAR_OVERLAP}
    assert len(kept) == 106 and "106 classes" in OOD_SETS["TinyImageNet"].content
    cifar10 = class_names(find_archive(shared, "cifar10.tar"))
    assert cifar10 == set(CIFAR10_WORDS)
    named = {wnid: [word for names in CIFAR10_WORDS.values() for word in names if f" {word} " in words]
             for wnid, words in kept.items()}
    assert not {wnid: found for wnid, found in named.items() if found}, "kept classes named after a CIFAR-10 class"
    cifar100 = [name.replace("_", " ") for name in class_names(find_archive(shared, "cifar100.tar"))]
    assert len(cifar100) == 100
    named = {wnid: [name for name in cifar100 if f" {name} " in words] for wnid, words in kept.items()}
    assert {wnid: found for wnid, found in named.items() if found} == \
        {wnid: [name] for wnid, name in CIFAR100_NAME_IN_ANOTHER_SENSE.items()}

    out = tmp_path / "TinyImageNet"
    counts = shared_archives.unpack_ood_set(OOD_SETS["TinyImageNet"], find_archive(shared, "tin_train.tar"), out, None)
    assert counts == {"test": 1060} and "1,060 images" in OOD_SETS["TinyImageNet"].content
    # each class's first 10 of its 500 images in file-name order (_0, _1, _10, _100, ..., _106), 2 of which
    # (_0, _100) are held out of the pretraining as its val images, as the description says
    first = sorted(range(500), key=str)[:TIN_OOD_PER_CLASS]
    assert written(out) == sorted(f"test/{wnid}/{wnid}_{i}.JPEG" for wnid in kept for i in first)
    assert sum(i % TIN_HELDOUT_EVERY == 0 for i in first) == 2
    assert "8 of each class's 10" in OOD_SETS["TinyImageNet"].content
