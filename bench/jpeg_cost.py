"""What a 32-px JPEG round trip costs a classifier: two copies of one image set for the airbench94 reference.

The shared CIFAR-10 and CIFAR-100 are JPEG re-encodings at 32 px (libjpeg's quality-75 tables, 4:2:0 chroma;
see the data manifest), so every accuracy of docs/CIFAR_RECIPE.md is measured on degraded pixels, while the
published figures it is compared with (airbench94's 94.01 %) are measured on the originals. No original CIFAR
pixels are available offline, so this builds the comparison from another set: each image of the first
`--classes` class folders of an ImageFolder split (Tiny ImageNet's 64-px train split) is averaged down to 32 px
(`original/`, PNG) and, separately, sent once through the same JPEG encoding as the CIFAR copy (`jpeg75/`, PNG of
the decoded pixels). Training `bench.airbench_reference` on each copy, with the same seed and so the same split,
measures the round trip's cost (docs/CIFAR_RECIPE.md §11, stage 7e):

  python -m bench.jpeg_cost --source dataset/pretrain/tin/train --out runs/jpeg_cost/data
  python -m bench.airbench_reference --datadir runs/jpeg_cost/data/original --out runs/jpeg_cost/original
  python -m bench.airbench_reference --datadir runs/jpeg_cost/data/jpeg75 --out runs/jpeg_cost/jpeg75
"""
import argparse
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from datasets.folder import find_classes, list_samples
from utils.base.io import save_png_atomic, write_text_atomic

SIZE = 32
JPEG_QUALITY = 75  # the CIFAR copy's quantisation tables are libjpeg's standard ones at quality 75
JPEG_SUBSAMPLING = "4:2:0"  # and its chroma is subsampled 2x2
ARMS = ("original", "jpeg75")


def downsample(image):
    """RGB uint8 array at SIZE x SIZE: each output pixel is the mean of the source pixels it covers."""
    return np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BOX))


def jpeg_round_trip(pixels):
    """The pixels after one encode/decode at the CIFAR copy's JPEG settings."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def build(source, out, classes, progress=True):
    """Write <out>/original and <out>/jpeg75 for the first `classes` class folders of `source`; a marker
    records the parameters, so a finished build with the same ones is kept and an unfinished one redone."""
    source, out = Path(source), Path(out)
    chosen = find_classes(source)[:classes]
    if len(chosen) < classes:
        raise ValueError(f"--source {source} has {len(chosen)} class folders, fewer than --classes {classes}")
    params = {"source": str(source.resolve()), "classes": chosen, "size": SIZE, "quality": JPEG_QUALITY,
              "subsampling": JPEG_SUBSAMPLING}
    marker = out / ".complete"
    if marker.exists() and json.loads(marker.read_text()) == params:
        return params
    marker.unlink(missing_ok=True)
    for arm in ARMS:  # an earlier build with other classes must not leave its folders behind
        shutil.rmtree(out / arm, ignore_errors=True)
    samples = list_samples(source, classes=None)
    samples = [(path, label) for path, label in samples if label < classes]
    for path, label in tqdm(samples, desc="jpeg_cost", disable=not progress):
        with Image.open(path) as image:
            pixels = downsample(image)
        for arm, arm_pixels in zip(ARMS, (pixels, jpeg_round_trip(pixels))):
            save_png_atomic(out / arm / chosen[label] / f"{path.stem}.png", arm_pixels)
    write_text_atomic(marker, json.dumps(params, indent=2) + "\n")
    return params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="ImageFolder split, e.g. Tiny ImageNet's train split")
    parser.add_argument("--out", required=True, help="folder for the two copies, original/ and jpeg75/")
    parser.add_argument("--classes", type=int, default=100, help="the first N class folders (sorted names)")
    args = parser.parse_args(argv)
    if args.classes < 2:
        parser.error(f"--classes must be at least 2, got {args.classes}")
    params = build(args.source, args.out, args.classes)
    print(f"{len(params['classes'])} classes -> {args.out}/original and {args.out}/jpeg75")


if __name__ == "__main__":
    main()
