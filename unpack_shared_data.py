"""Unpack the shared real image sets (the ID set and the OOD stand-ins) into the ImageFolder layout.

    python unpack_shared_data.py --shared ../shared/data --out dataset/reproduce_small/full
    python unpack_shared_data.py --shared ../shared/data --out dataset/c100 --id cifar100

Writes <out>/<ID>/{train,test} (cifar10 by default, or cifar100) and <out>/<OOD name>/test, plus
<out>/manifest.json (what each set is), and prints the OOD split folders, one per line (log lines go to stderr). Sets already
unpacked are kept; an interrupted run continues where it stopped (datasets/shared_archives.py).
--*_per_class keep the first N images of every class folder, for tiny test runs; left out, every
image is kept.

    python unpack_shared_data.py --shared ../shared/data --out dataset/pretrain --tin

With --tin only Tiny ImageNet's train split is unpacked (<out>/tin/train, and <out>/tin/val the 2 % of it
held out, not the official val split; classes.tsv and train_boxes.csv in <out>/tin), the pretraining set
of scripts/pretrain.sh; its folder is printed.

    python unpack_shared_data.py --default_ood --id cifar100

prints the OOD sets unpacked when --ood is left out, on one line, and unpacks nothing:
scripts/reproduce_small.sh's default OOD_SETS. They are OpenOOD v1.5's CIFAR composition with our stand-ins:
near-OOD the other CIFAR and TinyImageNet (Tiny ImageNet classes that are no CIFAR class), far-OOD MNIST, SVHN,
Textures and MiniPlaces (for Places365); Scene15 and IntelScenes are unpacked only when named in --ood.
"""
import argparse
import sys

from datasets.shared_archives import DEFAULT_ID, ID_SETS, OOD_SETS, default_ood_sets, unpack_shared, unpack_tin
from utils.base.cli import run_cli


def optional_count(text):
    """'' (unset environment variable) -> None, i.e. every image."""
    if text == "":
        return None
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of images per class or '', got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", help="folder with the shared archives (cifar10.tar, ...)")
    parser.add_argument("--out", help="where the ImageFolder sets are unpacked")
    parser.add_argument("--id", default=DEFAULT_ID, choices=list(ID_SETS), help="the ID set (train and test splits)")
    parser.add_argument("--ood", nargs="*", default=None, choices=list(OOD_SETS),
                        help="OOD sets (default: OpenOOD v1.5's composition, as --default_ood prints it; none: the "
                             "ID set only)")
    parser.add_argument("--tin", action="store_true",
                        help="unpack only Tiny ImageNet's train split (tin_train.tar.gz), for pretraining")
    parser.add_argument("--default_ood", action="store_true",
                        help="print the default OOD sets of --id on one line (what --ood left out unpacks) and stop")
    for split in ("train", "test", "ood"):
        parser.add_argument(f"--{split}_per_class", type=optional_count, default=None,
                            help="keep the first N images per class ('' or left out: all)")
    args = parser.parse_args(argv)
    if not args.default_ood and (args.shared is None or args.out is None):
        parser.error("--shared and --out are required (but with --default_ood)")
    return args


def unpack(args):
    log = lambda message: print(f"[data] {message}", file=sys.stderr)  # noqa: E731
    if args.default_ood:
        print(" ".join(default_ood_sets(args.id)))
        return
    if args.tin:
        print(unpack_tin(args.shared, args.out, args.train_per_class, log=log))
        return
    ood = default_ood_sets(args.id) if args.ood is None else args.ood
    splits = unpack_shared(args.shared, args.out, ood, args.train_per_class, args.test_per_class,
                           args.ood_per_class, log=log, id_name=args.id)
    print("\n".join(str(split) for split in splits))


def main(argv=None):
    run_cli(unpack, parse_args(argv), "unpack_shared_data.py")


if __name__ == "__main__":
    main()
