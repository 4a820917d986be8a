"""Pseudo masks for DFB from the K-class classifier's class activation maps.

  python make_cam.py --dataset=dataset/cifar10/train \
      --model_path=cls_pretrained_models/cifar10.pth.tar --head_size=10

Writes dataset/cifar10/train_mask/<class>/<stem>.png (value k = class k foreground,
K = background; the release writes 0 = background, k + 1 = class k), skips masks already
written, and runs under torchrun too.
"""
import argparse

from datasets.masks import IGNORE_INDEX, MAX_CLASSES
from utils.base.cli import run_cli
from utils.base.run_flags import defines_run, run_defining_flags
from utils.cam import main as main_make_cam


def build_parser():
    """make_cam.py's flags; those in defines_run(...) decide what the masks are, so they are recorded,
    in this order, in the mask folder's provenance.json (with the classifier's sha256), and masks
    made with other values are not reused (utils/cam/main.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="split folder, ImageFolder layout <dataset>/<class>/<image>")
    parser.add_argument("--model_path", required=True, help="K-class classifier checkpoint (train.py --task cls, or the release's train.py: "
                                                              "then --head_size and --model say what it is)")
    parser.add_argument("--head_size", type=int, required=True, help="K, the number of classes of the classifier")
    parser.add_argument("--model", default=None, help="model name (default: from the checkpoint, else BiT-M-R50x1)")
    defines_run(parser.add_argument("--labeled", action=argparse.BooleanOptionalAction, default=False,
                                    help="use the folder label instead of the predicted class (--no-labeled to "
                                         "turn off)"))
    defines_run(parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0]))
    defines_run(parser.add_argument("--sigma", type=float, default=4.0, help="Gaussian blur sigma in pixels"))
    defines_run(parser.add_argument("--threshold", type=float, default=0.5,
                                    help="foreground where the normalised CAM > this"))
    defines_run(parser.add_argument("--resolution", type=int, default=None,
                                    help="CAM input size = mask size (default: the classifier's training "
                                         "resolution, else 128)"))
    parser.add_argument("--out", default=None, help="mask folder (default: <dataset>_mask)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=["bf16", "none"], default=None)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--overlays", type=int, default=16, help="images shown in <out>/overlays.png (0: none)")
    parser.add_argument("--true_masks", default=None,
                        help="folder of ground-truth masks (same contract): report the pseudo masks' IoU")
    parser.add_argument("--boxes", default=None,
                        help="CSV of object boxes (file,...,x0,y0,x1,y1; e.g. Tiny ImageNet's train_boxes.csv): "
                             "score every image's CAM against its box into summary.json: pointing accuracy (the "
                             "peak inside the box) of the network's scale-1 CAM, of the multi-scale CAM before the "
                             "blur and of the blurred one the masks threshold; mask-box IoU; and a centred box of "
                             "the mean size as baseline")
    parser.add_argument("--skip_corrupt", action="store_true",
                        help="leave out images that cannot be decoded (listed in the log) instead of stopping at the first one")
    parser.add_argument("--overwrite", action="store_true", help="recompute masks that already exist")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.head_size < 1 or args.head_size > MAX_CLASSES:
        parser.error(f"--head_size must be in 1..{MAX_CLASSES} (masks are uint8 with {IGNORE_INDEX} = ignore)")
    if not 0 < args.threshold < 1:
        parser.error("--threshold must be in (0, 1)")
    return args


# the tagged flags, in parser order: what the mask folder's provenance.json records
RUN_DEFINING_FLAGS = run_defining_flags(build_parser())


def run(args):
    """Write the pseudo masks of `args` (utils/cam/main.py)."""
    return main_make_cam.run(args, RUN_DEFINING_FLAGS)


def main(argv=None):
    return run_cli(run, parse_args(argv), "make_cam.py")


if __name__ == "__main__":
    main()
