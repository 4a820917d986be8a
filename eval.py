"""OOD evaluation of a classifier (cls) or DFB (dfb) checkpoint.

  python eval.py --model_path runs/cifar10_dfb/checkpoint.pth.tar \
      --id_train_path dataset/cifar10/train --id_test_path dataset/cifar10/test \
      --ood_path dataset/SVHN/test dataset/Places/test dataset/Textures/test --logdir results/cifar10_dfb

Writes <logdir>/results.csv (one row per method and OOD set), results.md, accuracy.json,
fusion_selection.json, score_settings.json, logits/<set>.npy, scores/<method>/<set>.npy and figures/
(--fusion_val_ood DIR: choose the DFB fusions on a real OOD folder kept apart from the test sets);
with --save_detector, detector.pt, which score.py applies to new images (docs/SCORE.md).
Logits and features are computed in fp32 unless --amp bf16 is given. --tta flip: every image's
logits and pooled features are the mean over the image and its horizontal mirror, for every set;
--tta flip_translate: airbench's six-view average (the mirror and two 1 px translations).
"""
import argparse

from utils.base.cli import run_cli
from utils.evaluate.engine import TTA_MODES
from utils.evaluate.main import BEST_DETECTOR, run
from utils.ood.detector import DEFAULT_METHOD
from utils.ood.fusion import FUSIONS, DEFAULT_FUSION
from utils.ood.scores import SCORE_CLASSES


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="checkpoint of train.py (--task cls or dfb)")
    parser.add_argument("--id_train_path", required=True, help="ID training split (fits KNN, ViM, ReAct, Mahalanobis)")
    parser.add_argument("--id_test_path", required=True, help="ID test split (the positives)")
    parser.add_argument("--ood_path", nargs="+", required=True, help="one or more OOD splits")
    parser.add_argument("--logdir", required=True, help="result folder")
    parser.add_argument("--task", choices=["cls", "dfb"], default=None, help="only for checkpoints that do not say")
    parser.add_argument("--head_size", type=int, default=None, help="only for checkpoints that do not say")
    parser.add_argument("--model", default=None, help="model name (default: from the checkpoint)")
    parser.add_argument("--resolution", type=int, default=None, help="test size (default: the checkpoint's)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=["bf16", "none"], default="none",
                        help="precision of the extracted logits and features (default none = fp32, also on GPUs: "
                             "the reported numbers should not depend on bf16 rounding)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none",
                        help="test-time augmentation (default none: one forward per image). flip: the logits and "
                             "pooled features of every image are the mean over the image and its horizontal mirror "
                             "(two forwards); flip_translate: airbench's multi-crop average, half the flip average "
                             "of the image and half the mean of the flip averages of its 1 px translations to the "
                             "top left and the bottom right (reflection-padded; six forwards). Either is applied "
                             "identically to the ID training images that fit the scores, the "
                             "ID test set, every OOD set and the fusions' validation images (ODIN's perturbation "
                             "follows the averaged logits); accuracy.json's top-1 is then the averaged one, and "
                             "--save_detector's detector.pt makes score.py average the same way. The dense "
                             "predictions (dense_maps.npz, dense_layout.json) stay single-view")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fusion", choices=sorted(FUSIONS), default=DEFAULT_FUSION,
                        help="fusion reported under the plain name DFB-<method> (all are reported)")
    parser.add_argument("--shuffle_grid", type=int, default=4, help="tiles per side of the pseudo-OOD images")
    parser.add_argument("--fusion_images", type=int, default=1000,
                        help="dfb: held-out ID training images that choose the fusions' sign and T (the checkpoint's "
                             "holdout_samples if it has enough, else a slice of --id_train_path drawn with --seed); "
                             "they are left out of the fitted scores")
    parser.add_argument("--fusion_val_ood", default=None, metavar="DIR",
                        help="dfb: a real OOD folder (ImageFolder split) to choose every fusion's sign and T and the "
                             "background's direction on, against the held-out ID images, instead of their "
                             "patch-shuffled copies (as OpenOOD uses Tiny ImageNet val for CIFAR); it must not be an "
                             "--ood_path nor share images with an evaluated set, and is never reported")
    parser.add_argument("--save_detector", nargs="?", const=DEFAULT_METHOD, default=None, metavar="METHOD",
                        choices=sorted(SCORE_CLASSES) + [BEST_DETECTOR],
                        help=f"dfb: write <logdir>/detector.pt, the fitted detector DFB-METHOD (fusion mode --fusion, "
                             f"threshold keeping 95 %% of the held-out ID images) for score.py; METHOD defaults to "
                             f"{DEFAULT_METHOD} when the flag is given alone; '{BEST_DETECTOR}': the DFB-METHOD with the "
                             f"highest validation AUROC in fusion_selection.json")
    parser.add_argument("--skip_corrupt", action="store_true",
                        help="leave out images that cannot be decoded (listed in the log) instead of stopping at the first one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense_maps", type=int, default=8,
                        help="dfb: images per set, spread over its classes, whose dense prediction "
                             "<logdir>/dense_maps.npz holds and figures/dense_maps.png shows (0: neither)")
    parser.add_argument("--layout_images", type=int, default=1000,
                        help="dfb: images per set (seeded subset) for dense_layout.json, how much the dense "
                             "network's foregrounds are one shared blob (0: skip)")
    parser.add_argument("--odin_temperature", type=float, default=2.0,
                        help="ODIN temperature (default 2, as the official DFB evaluation; the original ODIN uses 1000)")
    parser.add_argument("--odin_epsilon", type=float, default=0.0,
                        help="ODIN input perturbation in [0, 1] pixel units (default 0: temperature only, as the "
                             "official DFB evaluation; the original ODIN uses 0.0014). Costs one backward pass per image")
    parser.add_argument("--energy_temperature", type=float, default=1.0)
    parser.add_argument("--knn_k", type=int, default=50)
    parser.add_argument("--react_percentile", type=float, default=90.0)
    args = parser.parse_args(argv)
    if args.odin_epsilon < 0:
        parser.error("--odin_epsilon must be >= 0")
    if args.fusion_images < 1:
        parser.error("--fusion_images must be >= 1")
    if args.fusion_val_ood is not None and args.task == "cls":
        parser.error("--fusion_val_ood is for dfb checkpoints (it chooses the DFB fusions)")
    if args.save_detector == "ODIN" and args.odin_epsilon > 0:
        parser.error("--save_detector ODIN needs --odin_epsilon 0: score.py does not perturb its input images")
    return args


def main(argv=None):
    return run_cli(run, parse_args(argv), "eval.py")


if __name__ == "__main__":
    main()
