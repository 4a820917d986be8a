"""Download and convert the paper's data sets into dataset/<name>/<split>/<class>/<image>.

    python prepare_data.py --root dataset --datasets cifar10 cifar100 SVHN Textures Places
    python prepare_data.py --root dataset --datasets TinyImageNet   # train/val by wnid, classes.tsv, boxes

Already prepared data sets are skipped; an interrupted run continues where it stopped.
"""
import argparse
import sys

from datasets.prepare import DATASETS, PAPER_DATASETS, DownloadError, prepare


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="dataset", help="output folder (default: dataset)")
    parser.add_argument("--datasets", nargs="+", default=list(PAPER_DATASETS), choices=list(DATASETS),
                        metavar="NAME", help=f"data sets to prepare, any of {list(DATASETS)} "
                                             f"(default: the paper's, {list(PAPER_DATASETS)})")
    parser.add_argument("--download-dir", default=None,
                        help="where archives are downloaded / placed by hand (default: <root>/downloads)")
    parser.add_argument("--delete-archives", action="store_true",
                        help="delete each downloaded archive once its data set is converted")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        prepared = prepare(args.datasets, args.root, download_dir=args.download_dir,
                           keep_archives=not args.delete_archives, progress=not args.no_progress)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("ready:")
    for name, folder in prepared.items():
        print(f"  {name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
