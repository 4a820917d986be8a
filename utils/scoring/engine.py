"""Scoring image files with a fitted detector (score.py's stage): the detector's network turns images
into logits and features as eval.py extracts them, utils/ood/detector.py turns those into scores.

    scorer = ImageScorer.load("results/cifar10_dfb/detector.pt")
    rows = scorer.score_paths(["photos/", "cat.jpg"])      # one dict per image, the CSV columns
    out = scorer.score_tensors(uint8_batch)                # arrays per column, for images in memory

The network forward, its test-time augmentation (the detector's `tta`, eval.py's --tta) and the
test-time resize are eval.py's, so an image scores here as it scored in eval.py's
scores/<method>/<set>.npy. The dense map (bg_fraction, the background maps) is single-view, as
eval.py's dense_maps.npz. Column contract: docs/SCORE.md.
"""
import csv
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.batch_augment import resize_float, test_resize
from datasets.folder import IMG_EXTENSIONS, ImageFolderDataset, find_unreadable, is_image_file
from datasets.transforms import normalize_float
from models.loading import load_network
from utils.base.checkpoint import file_digest
from utils.base.distributed import resolve_device
from utils.base.io import save_png_atomic, write_text_atomic
from utils.base.runtime import autocast
from utils.evaluate.engine import with_tta
from utils.ood.detector import Detector, read_detector

# Smaller images hold no object to judge: upscaled to the resolution they become a few flat
# blocks, and the dense map's background fraction means nothing
MIN_IMAGE_SIDE = 8
CSV_COLUMNS = ["path", "score", "fg_score", "bg_score", "is_ood", "pred_class", "pred_prob", "bg_fraction"]
_EXTENSIONS = ", ".join(IMG_EXTENSIONS)


def _size_problem(width, height):
    if min(width, height) < MIN_IMAGE_SIDE:
        return (f"is {width}x{height} pixels (WxH); expected at least {MIN_IMAGE_SIDE} pixels on each side "
                f"(smaller images hold nothing to judge once resized)")
    return None


class ImageFiles(ImageFolderDataset):
    """Loose image files decoded as eval.py decodes its splits (ImageFolderDataset: any PIL mode to
    8-bit RGB, at native size, the same error messages), without class folders: label 0."""

    def __init__(self, paths):  # no super().__init__: it lists class folders, which loose files lack
        self.samples = [(Path(path), 0) for path in paths]
        self.image_size, self.with_masks, self.skipped = None, False, []

    def __getitem__(self, index):
        item = super().__getitem__(index)
        problem = _size_problem(item["image"].shape[2], item["image"].shape[1])
        if problem:
            raise ValueError(f"image {self.samples[index][0]} {problem}; pass --skip_corrupt to leave it out")
        return item


def image_files(inputs):
    """The image files of `inputs` (files, and folders searched recursively, sorted; hidden files and
    folders skipped), in order. An input that holds no image is an error, not an empty result."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise FileNotFoundError(f"--images {path}: no image files in this folder or below it "
                                        f"(extensions {_EXTENSIONS})")
            files += found
        elif path.is_file():
            if not is_image_file(path):
                raise ValueError(f"--images {path} is not an image file (expected one of the extensions "
                                 f"{_EXTENSIONS})")
            files.append(path)
        else:
            raise FileNotFoundError(f"--images {path} does not exist")
    return files


def leave_out_unusable(files):
    """(usable files, [(file, reason)]): those that do not decode or are too small are left out."""
    problems = dict(find_unreadable(files))
    for path in files:
        if path not in problems:
            with Image.open(path) as image:
                problem = _size_problem(*image.size)
            if problem:
                problems[path] = problem
    if problems:
        listed = list(problems.items())
        print(f"[score] --skip_corrupt: left out {len(listed)} images: "
              + "; ".join(f"{path} ({reason})" for path, reason in listed[:3]) + ("; ..." if len(listed) > 3 else ""))
    usable = [path for path in files if path not in problems]
    if not usable:
        raise ValueError(f"none of the {len(files)} images could be used ({len(problems)} unreadable or too small)")
    return usable, list(problems.items())


def side_by_side(image, background_probability, min_side=128):
    """uint8 [H, 2W + gap, 3]: the network's input image beside its background probability (magma:
    black 0, yellow 1), upscaled by an integer factor to at least `min_side` pixels high."""
    from matplotlib import colormaps
    heat = (colormaps["magma"](background_probability)[..., :3] * 255).round().astype(np.uint8)
    gap = np.full((image.shape[0], max(1, image.shape[1] // 16), 3), 255, dtype=np.uint8)
    panel = np.concatenate([image, gap, heat], axis=1)
    factor = -(-min_side // image.shape[0])
    return panel.repeat(factor, axis=0).repeat(factor, axis=1)


# ---------------------------------------------------------------- the detector on its network

class ImageScorer:
    """A detector on its network: `score_tensors` for images in memory, `score_paths` for files."""

    def __init__(self, detector, model, device, path, model_path):
        self.detector, self.model, self.device = detector, model.to(device).eval(), device
        # detectors written before --tta existed were fitted on single-view outputs
        self.tta = detector.spec.get("tta", "none")
        self.network = with_tta(self.model, self.tta)
        self.path, self.model_path = Path(path), Path(model_path)
        self.resolution = detector.spec["model"]["resolution"]
        self.threshold = detector.threshold

    @classmethod
    def load(cls, path, model_path=None, device="auto"):
        """The detector of `path` on the checkpoint it names (or `model_path`), which must be the very
        file it was fitted on (same sha256)."""
        spec = read_detector(path)
        model_path = Path(model_path or spec["checkpoint"]["path"])
        if not model_path.is_file():
            raise FileNotFoundError(f"checkpoint {model_path} (of detector {path}) does not exist; pass "
                                    f"--model_path with the checkpoint eval.py evaluated")
        digest = file_digest(model_path)
        if digest != spec["checkpoint"]["sha256"]:
            raise ValueError(f"detector {path} was fitted on checkpoint {spec['checkpoint']['path']} (sha256 "
                             f"{spec['checkpoint']['sha256'][:16]}...), but {model_path} has sha256 {digest[:16]}...: "
                             f"pass the checkpoint eval.py evaluated, or run eval.py --save_detector on this one")
        model, _, _, _ = load_network(model_path, task="dfb", head_size=spec["model"]["head_size"],
                                      model_name=spec["model"]["name"])
        try:
            device = resolve_device(device)
        except RuntimeError as error:  # no CUDA: bad input, not a crash
            raise ValueError(str(error)) from None
        return cls(Detector(spec, device), model, device, path, model_path)

    def describe(self):
        return (f"{self.detector.describe()}, {self.resolution} px, test-time augmentation {self.tta}, "
                f"checkpoint {self.model_path}")

    def network_input(self, images):
        """uint8 [B, 3, H, W] (0..255) or float [B, 3, H, W] (0..1) -> the normalised [B, 3, r, r] eval.py feeds."""
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a tensor [B, 3, H, W], got "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        if min(images.shape[2:]) < MIN_IMAGE_SIDE:
            raise ValueError(f"images: {images.shape[3]}x{images.shape[2]} pixels (WxH); expected at least "
                             f"{MIN_IMAGE_SIDE} on each side")
        images = images.to(self.device)
        if images.dtype == torch.uint8:
            return test_resize(images, self.resolution)
        if not images.is_floating_point() or images.min() < 0 or images.max() > 1:
            raise ValueError(f"images: expected uint8 (0..255) or floats in [0, 1], got {images.dtype}")
        return normalize_float(resize_float(images * 255.0, self.resolution))

    def score_tensors(self, images, background_maps=False):
        """{column: array [B]} for a batch (the CSV columns but `path`; pred_class holds names);
        background_maps adds `bg_probability` [B, r, r], the dense network's background probability."""
        return self._score_input(self.network_input(images), background_maps)

    @torch.no_grad()
    def _score_input(self, x, background_maps):
        k = self.detector.num_classes
        with autocast(self.device, self.detector.spec["amp"]):
            logits, features = self.network.forward_with_features(x)
            dense = self.model.dense_logits(x, upsample=True)
        out = self.detector.score(logits.float().cpu().numpy(), features.float().cpu().numpy())
        dense = dense.float()
        out["bg_fraction"] = (dense.argmax(dim=1) == k).float().mean(dim=(1, 2)).cpu().numpy()
        if background_maps:
            out["bg_probability"] = dense.softmax(dim=1)[:, k].cpu().numpy()
        return out

    def score_paths(self, inputs, batch=64, workers=0, skip_corrupt=False, maps=None, progress=False):
        """One dict per image of `inputs` (files and folders, as `image_files`), keys CSV_COLUMNS.
        maps: a folder for one PNG per image, <row number>_<stem>.png, the image beside its
        background probability."""
        if batch < 1:
            raise ValueError(f"--batch must be >= 1, got {batch}")
        files = image_files(inputs)
        if skip_corrupt:
            files, _ = leave_out_unusable(files)
        loader = DataLoader(ImageFiles(files), batch_size=batch, num_workers=workers, collate_fn=list)
        rows, width = [], len(str(len(files) - 1))
        with tqdm(total=len(files), unit="img", desc="score", disable=not progress or len(files) <= batch,
                  leave=False) as bar:
            for items in loader:
                # images of different sizes: each is resized on its own, as eval.py's test transform does
                images = torch.cat([test_resize(item["image"][None].to(self.device), self.resolution)
                                    for item in items])
                out = self._score_input(images, maps is not None)
                for j, item in enumerate(items):
                    index = len(rows)
                    path = files[item["index"]]
                    rows.append({"path": str(path), **{key: out[key][j].item() for key in CSV_COLUMNS[1:]}})
                    if maps is not None:
                        image = ((images[j] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
                        save_png_atomic(Path(maps) / f"{index:0{width}d}_{path.stem}.png",
                                        side_by_side(image.cpu().numpy(), out["bg_probability"][j]))
                bar.update(len(items))
        return rows


def write_csv(path, rows):
    """rows (dicts with CSV_COLUMNS) -> CSV, atomically; floats with 9 significant digits (float32
    round-trips), is_ood as 1 / 0."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.9g}" if isinstance(value, float) else int(value) if isinstance(value, bool)
                               else value) for key, value in row.items()})
    write_text_atomic(path, buffer.getvalue())
