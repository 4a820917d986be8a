"""Write a trained classifier's body as a BiT .npz, the file `--pretrained` loads.

    python export_npz.py --checkpoint runs/tin_pretrain/checkpoint.pth.tar --out pretrained/ResNetV2-Tiny-TIN.npz

The arrays carry the keys and layouts of the official BiT files (``resnet/...``, convolutions HWIO),
so `train.py --pretrained <out>` loads them exactly as it loads BiT-M-R50x1: every weight but the
1x1 head conv, which fine-tuning starts at zero. Used by scripts/pretrain.sh after pretraining on
Tiny ImageNet; prints the file's sha256, which every later stage records.
"""
import argparse

import numpy as np

from models.loading import load_network
from utils.base.checkpoint import file_digest
from utils.base.cli import run_cli
from utils.base.io import atomic_path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a finished train.py --task cls checkpoint")
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--allow_unfinished", action="store_true",
                        help="export a checkpoint whose run has not reached its last step")
    return parser.parse_args(argv)


def export(args):
    model, checkpoint, _, _ = load_network(args.checkpoint, expect_task="cls")
    if not checkpoint.get("finished", True) and not args.allow_unfinished:
        raise ValueError(f"{args.checkpoint} is at step {checkpoint['step']}, its run has not finished: rerun "
                         f"train.py to finish it, or pass --allow_unfinished")
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out}: expected a file name ending in .npz")
    with atomic_path(args.out) as tmp, open(tmp, "wb") as file:
        np.savez(file, **model.npz_arrays(include_head=False))
    print(f"[export_npz] {model.model_name} body of {args.checkpoint} (step {checkpoint['step']}) -> {args.out}")
    print(f"[export_npz] sha256 {file_digest(args.out)}")


def main(argv=None):
    run_cli(export, parse_args(argv), "export_npz.py")


if __name__ == "__main__":
    main()
