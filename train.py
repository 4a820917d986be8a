"""Fine-tune BiT: the K-class classifier (--task cls) or DFB's (K+1)-class dense network (--task dfb).

  python train.py --task cls --datadir dataset/cifar10/train --test_datadir dataset/cifar10/test \
      --name cifar10_cls --export cls_pretrained_models/cifar10.pth.tar
  python train.py --task dfb --datadir dataset/cifar10/train --test_datadir dataset/cifar10/test \
      --name cifar10_dfb

Runs resume automatically from <logdir>/<name>/checkpoint.pth.tar. Under torchrun every
process trains on its slice of each global batch (--batch is the global batch).
"""
import argparse

from datasets.batch_augment import FLIP_MODES
from datasets.masks import MASK_FORMATS
from datasets.scale_crop import check_scale_range
from utils.base.cli import run_cli
from utils.base.run_flags import defines_run, run_defining_flags
from utils.train import main as main_train


def build_parser():
    """train.py's flags; those in defines_run(...) define what a run computes, so a run resumes (or
    is reported finished) only with the values its checkpoint stores (utils/train/resume.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defines_run(parser.add_argument("--task", choices=["cls", "dfb"], required=True,
                                    help="cls: K-class classifier; dfb: (K+1)-class dense network on pseudo masks"))
    parser.add_argument("--datadir", required=True, help="training split, ImageFolder: <datadir>/<class>/<image>")
    parser.add_argument("--test_datadir", default=None, help="ID test split for top-1 (e.g. dataset/cifar10/test)")
    parser.add_argument("--mask_dir", default=None, help="dfb: pseudo masks (default: <datadir>_mask)")
    defines_run(parser.add_argument("--mask_format", choices=MASK_FORMATS, default=None,
                                    help="dfb: how to read masks without our provenance.json: official = the original "
                                         "release's make_cam.py (0 background, class k as k+1), ours = class k as k, "
                                         "background K (default: refuse such masks)"))
    defines_run(parser.add_argument("--model", default="BiT-M-R50x1",
                                    help="BiT model name (or ResNetV2-Tiny for demos)"))
    defines_run(parser.add_argument("--half_stride", action="store_true",
                                    help="last block with stride 1 (output stride 16: 8x8 CAMs / dense maps at "
                                         "128 px), the release's half_stride; stored in the checkpoint"))
    parser.add_argument("--logdir", default="runs", help="runs are written to <logdir>/<name>/")
    parser.add_argument("--name", required=True, help="run name")
    parser.add_argument("--export", default=None, help="copy the finished checkpoint here")
    defines_run(parser.add_argument("--batch", type=int, default=128, help="global batch size"))
    # not run-defining: a run may go on at a lower rate after a loss that was not finite
    parser.add_argument("--base_lr", type=float, default=0.003)
    defines_run(parser.add_argument("--steps", type=int, default=None,
                                    help="total steps (default: BiT HyperRule; the schedule is scaled to fit)"))
    defines_run(parser.add_argument("--mixup", type=float, default=None, help="cls MixUp alpha (default: HyperRule)"))
    defines_run(parser.add_argument("--schedule", choices=["bit", "cosine", "linear"], default="bit",
                                    help="learning-rate rule: bit = BiT HyperRule (warm-up, x0.1 steps; the "
                                         "paper's); cosine = the same warm-up, then half a cosine to 0 at the "
                                         "last step (from scratch); linear = the same warm-up, then a straight "
                                         "line to 0 at the last step (the fast CIFAR recipes)"))
    defines_run(parser.add_argument("--warmup_steps", type=int, default=None,
                                    help="linear warm-up steps (default: the schedule's, 500 of 10k scaled with "
                                         "--steps)"))
    defines_run(parser.add_argument("--weight_decay", type=float, default=0.0,
                                    help="L2 weight decay of convolution / linear weights only, not of GroupNorm "
                                         "parameters or biases (default 0, BiT HyperRule)"))
    defines_run(parser.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD momentum 0.9)"))
    defines_run(parser.add_argument("--label_smoothing", type=float, default=0.0,
                                    help="label smoothing of the classification targets (cls loss, MixUp targets, "
                                         "dfb --image_loss_weight)"))
    defines_run(parser.add_argument("--ema_decay", type=float, default=0.0,
                                    help="keep an exponential moving average of the weights with this decay per "
                                         "step (e.g. 0.99) and evaluate and keep it at the end instead of the last "
                                         "weights (evaluations during the run use the last weights); 0: off"))
    defines_run(parser.add_argument("--lookahead", action="store_true",
                                    help="airbench's lookahead: every 5 steps slow weights move towards the network's "
                                         "(by 1 - 0.95^5 (step / steps)^3) and the network restarts from them; the "
                                         "run ends with the slow weights (not with --ema_decay)"))
    defines_run(parser.add_argument("--flip", choices=FLIP_MODES, default="random",
                                    help="horizontal flips of training images: random (p = 0.5 per draw) or "
                                         "alternate (each image mirrored in every other epoch; in-memory data only)"))
    defines_run(parser.add_argument("--init_from", default=None,
                                    help="dfb: start from this K-class classifier checkpoint (body and K head rows "
                                         "copied, background row zero) instead of --pretrained"))
    defines_run(parser.add_argument("--image_loss_weight", type=float, default=0.0,
                                    help="dfb: adds this times the cross-entropy of the pooled K foreground logits "
                                         "and the image label to the dense loss"))
    defines_run(parser.add_argument("--resolution", type=int, default=128, help="training crop / test size"))
    defines_run(parser.add_argument("--train_resize", type=int, default=None,
                                    help="training images are resized to this, then randomly cropped to --resolution "
                                         "(default: resolution * 160/128, BiT's Resize 160 -> RandomCrop 128)"))
    defines_run(parser.add_argument("--train_pad", type=int, default=0, metavar="P",
                                    help="instead of --train_resize: pad the --resolution image by P px (reflection) "
                                         "and crop --resolution from it, a translation of up to P px without a "
                                         "zoom (in-memory data only); 0: off"))
    defines_run(parser.add_argument("--scale_range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                                    help="random scale s ~ U(LO, HI) of the resized image and its mask before the "
                                         "crop, padding black / ignore where the scaled image is smaller than the "
                                         "crop (the release's DeepLab-style ExtRandomScale + ExtRandomCrop; e.g. "
                                         "0.5 2.0); default: the plain resize -> crop"))
    defines_run(parser.add_argument("--pretrained", default=None,
                                    help="BiT .npz weights (default pretrained/<model>.npz), or 'none' to start "
                                         "from scratch"))
    defines_run(parser.add_argument("--holdout", type=float, default=None,
                                    help="fraction of training images held out, never trained on: val_top1 on "
                                         "them, and for dfb mask accuracy / IoU (default: 0.01 for dfb, 0 for cls)"))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", choices=["bf16", "none"], default=None,
                        help="mixed precision (default: bf16 on GPUs, none on the CPU)")
    parser.add_argument("--workers", type=int, default=4, help="data loader processes")
    parser.add_argument("--data_on_device", choices=["auto", "always", "never"], default="auto",
                        help="keep the decoded training set on the device (auto: when it fits)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--channels_last", action="store_true", help="channels_last memory format")
    parser.add_argument("--skip_corrupt", action="store_true",
                        help="leave out images that cannot be decoded (listed in the log) instead of stopping at the first one")
    defines_run(parser.add_argument("--seed", type=int, default=0))
    parser.add_argument("--eval_every", type=int, default=1000, help="evaluate every N steps (0: only at the end)")
    parser.add_argument("--save_every", type=int, default=500, help="checkpoint every N steps")
    parser.add_argument("--stop_after", type=int, default=None,
                        help="leave after N steps of this invocation (checkpointed; rerun to resume), "
                             "e.g. for jobs with a time limit")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("batch", "resolution", "save_every"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag} must be positive")
    if args.train_resize is not None and args.train_resize < args.resolution:
        parser.error(f"--train_resize ({args.train_resize}) must be at least --resolution ({args.resolution})")
    if args.holdout is None:
        args.holdout = 0.01 if args.task == "dfb" else 0.0
    if not 0 <= args.holdout < 1:
        parser.error("--holdout must be in [0, 1)")
    if args.train_pad < 0 or args.train_pad and (args.train_resize is not None or args.scale_range is not None):
        parser.error("--train_pad must be at least 0, and replaces --train_resize and --scale_range")
    if args.scale_range is not None:
        try:
            check_scale_range(args.scale_range)
        except ValueError as error:
            parser.error(f"--{error}")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        parser.error("--warmup_steps must be at least 0")
    if args.weight_decay < 0:
        parser.error("--weight_decay must be at least 0")
    if not 0 <= args.label_smoothing < 1:
        parser.error("--label_smoothing must be in [0, 1)")
    if not 0 <= args.ema_decay < 1:
        parser.error("--ema_decay must be in [0, 1)")
    if args.lookahead and args.ema_decay:
        parser.error("--lookahead and --ema_decay are two ways to average the weights: pass one")
    if args.image_loss_weight < 0:
        parser.error("--image_loss_weight must be at least 0")
    if args.task != "dfb" and (args.init_from or args.image_loss_weight):
        parser.error("--init_from and --image_loss_weight are for --task dfb (the dense network)")
    return args


# the tagged flags, in parser order: what a resumed run must share with its checkpoint
RUN_DEFINING_FLAGS = run_defining_flags(build_parser())


def run(args):
    """Train or resume the run of `args` (utils/train/main.py)."""
    return main_train.run(args, RUN_DEFINING_FLAGS)


def main(argv=None):
    return run_cli(run, parse_args(argv), "train.py")


if __name__ == "__main__":
    main()
