"""Score new images with a fitted DFB detector (the detector.pt of eval.py --save_detector).

  python score.py --detector results/cifar10_dfb/detector.pt --images photos/ extra.jpg --out scores.csv

Writes one CSV row per image (columns: docs/SCORE.md): the fused DFB score (higher = more
in-distribution), its foreground and background parts, is_ood at the detector's threshold (which
keeps 95 % of held-out ID images), the predicted ID class and its probability, and the fraction of
pixels the dense network calls background. Folders are searched recursively. --maps DIR adds one
PNG per image: the image beside the dense network's background probability.
"""
import argparse

from utils.base.cli import run_cli
from utils.scoring.main import run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", required=True, help="detector.pt written by eval.py --save_detector")
    parser.add_argument("--images", nargs="+", required=True, help="image files and / or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--model_path", default=None,
                        help="the checkpoint (default: the path stored in the detector); it must be the same file")
    parser.add_argument("--maps", default=None, metavar="DIR",
                        help="write <DIR>/<row>_<stem>.png per image: the image beside its background probability")
    parser.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu or cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="image decoding processes")
    parser.add_argument("--skip_corrupt", action="store_true",
                        help="leave out images that cannot be decoded or are too small (listed) instead of stopping")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    return args


def main(argv=None):
    return run_cli(run, parse_args(argv), "score.py")


if __name__ == "__main__":
    main()
