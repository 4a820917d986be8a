"""Speed of our pipeline against the official-style loop (bench/official_style.py), side by
side in one process on one device.

    python -m bench.benchmark --preset cpu-quick     # this 2-core CPU, under a minute
    python -m bench.benchmark --preset gpu-full      # one H100 / H200, BiT-M-R50x1 at 128

A preset is the file configs/benchmark_<name>.toml (option = value); explicit options win.

Rows, in images per second (median over repeats, after warm-up):
  train step (cls)        batch, forward, cross-entropy, backward, SGD step, data included
  train step (dfb dense)  the same with per-pixel cross-entropy on masks
  CAM                     class forward + 4 scales x 2 flips + mask post-processing per image
  feature extraction      logits and pooled features, decoding included
Ours: bf16 autocast on GPUs (fp32 on the CPU), training data decoded once and augmented on the
device (InMemoryBatches), batched CAMs (utils.cam.activation_maps), batched extraction. Then the projected
wall time of the paper's CIFAR-10 schedule at the measured rates, and its FLOP floor:
    floor = sum over stages of images x FLOPs per image / measured matmul peak,
FLOPs per image counted by torch.utils.flop_counter (convolutions and matmuls) for one
forward, training = 3 x forward.
"""
import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from bench import official_style as official
from datasets.folder import decode_all, find_classes
from datasets.masks import IGNORE_INDEX, mask_path, mask_root_for
from datasets.sources import GlobalBatchIndices, InMemoryBatches, eval_batches, open_split, restrict
from datasets.transforms import default_train_size
from models.resnetv2 import KNOWN_MODELS, create_model
from utils.base.distributed import resolve_device
from utils.base.io import save_png_atomic, write_text_atomic
from utils.base.runtime import autocast, default_amp
from utils.cam.activation_maps import DEFAULT_SCALES, pseudo_masks
from utils.train.engine import DenseLogits, classification_step, dense_step

DEFAULTS = dict(device="auto", model="BiT-M-R50x1", resolution=128, batch=128, warmup=3, steps=10,
                repeats=3, cam_images=128, eval_images=1024, workers=4, compile=False, channels_last=False)
PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"  # configs/benchmark_<name>.toml
PRESET_OPTIONS = {*DEFAULTS, "threads", "amp"}  # what a preset may set
SYNTHETIC_CLASSES = 10
SYNTHETIC_SIZE = 32
STAGES = (("train_cls", "train step (cls)"), ("train_dfb", "train step (dfb dense)"),
          ("cam", "CAM (4 scales + flips)"), ("extract", "feature extraction"))
# The paper's CIFAR-10 run (BiT HyperRule schedule, utils/train/schedule.py): images through each stage.
PAPER_STEPS, PAPER_BATCH = 10_000, 128
PAPER_TRAIN_IMAGES = 50_000
PAPER_EVAL_SETS = {"cifar10_train": PAPER_TRAIN_IMAGES, "cifar10_test": 10_000, "SVHN": 26_032, "Textures": 5_640,
                   "Places": 10_000}
PAPER_PIPELINE = (("decode split (cls + dfb)", "decode", 2 * PAPER_TRAIN_IMAGES),
                  ("classifier training", "train_cls", PAPER_STEPS * PAPER_BATCH),
                  ("CAM pseudo masks", "cam", PAPER_TRAIN_IMAGES),
                  ("DFB dense training", "train_dfb", PAPER_STEPS * PAPER_BATCH),
                  ("evaluation (extraction)", "extract", sum(PAPER_EVAL_SETS.values())))
# A variant counts as helping (or hurting) only beyond timing noise.
VARIANT_NOISE = 0.05
# The phases of our training step, in order; ours_training_step enters its `phase` hook around each.
TRAIN_PHASES = ("data", "forward + loss", "backward", "optimiser")


# -- timing ---------------------------------------------------------------------------------
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, images_per_step, warmup, steps, repeats, device, end_of_repeat=None):
    """Images per second of `step` (median over repeats of `steps` calls, after `warmup` calls).

    end_of_repeat runs inside each timed region (e.g. moving collected outputs off the device)."""
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if end_of_repeat is not None:
            end_of_repeat()
        synchronize(device)
        rates.append(steps * images_per_step / (time.perf_counter() - start))
    return {"images_per_s": statistics.median(rates), "repeats": rates}


def measure_peak(device, amp, rounds=3):
    """Best FLOP/s of a large square matmul in the precision our pipeline runs in (bf16 when
    `amp` is bf16, else fp32): 8192^2 on a GPU, 1024^2 on the CPU."""
    size, calls = (8192, 20) if device.type == "cuda" else (1024, 4)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            a @ b
        synchronize(device)
        best = max(best, 2 * size ** 3 * calls / (time.perf_counter() - start))
    return {"flop_per_s": best, "dtype": str(dtype).replace("torch.", ""), "matmul_size": size}


# -- FLOPs ----------------------------------------------------------------------------------
@torch.no_grad()
def count_flops(fn, model, resolution, device):
    """FLOPs (2 per multiply-add) of fn(one image of resolution x resolution)."""
    x = torch.zeros(1, 3, resolution, resolution, device=device)
    with FlopCounterMode(display=False) as counter:
        fn(model, x)
    return counter.get_total_flops()


def flops_per_image(cls_model, dfb_model, resolution, device, scales=DEFAULT_SCALES):
    """FLOPs per image of each benchmarked stage: training = 3 x forward; CAM = the class
    forward + two CAM forwards (image, mirror) at every scale."""
    forward = count_flops(lambda m, x: m(x), cls_model, resolution, device)
    dense = count_flops(lambda m, x: m.dense_logits(x, upsample=True), dfb_model, resolution, device)
    cam = forward + sum(2 * count_flops(lambda m, x: m.cam(x), cls_model,
                                        max(1, round(resolution * scale)), device) for scale in scales)
    return {"train_cls": 3 * forward, "train_dfb": 3 * dense, "cam": cam,
            "extract": count_flops(lambda m, x: m.forward_with_features(x), cls_model, resolution, device)}


# -- data -----------------------------------------------------------------------------------
def write_synthetic_folder(root, num_images, seed):
    """An ImageFolder of random SYNTHETIC_SIZE^2 RGB PNGs in SYNTHETIC_CLASSES classes."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        pixels = rng.integers(0, 256, (SYNTHETIC_SIZE, SYNTHETIC_SIZE, 3), dtype=np.uint8)
        save_png_atomic(Path(root) / f"class_{i % SYNTHETIC_CLASSES}" / f"img_{i:06d}.png", pixels)
    return Path(root)


def pick_subset(num_items, count, seed):
    """`count` distinct indices spread over all classes (the listing is sorted by class), sorted."""
    order = np.random.default_rng(seed).permutation(num_items)
    return np.sort(order[:min(count, num_items)]).tolist()


def masks_for(data_root, samples, resolution, num_classes, scratch, seed):
    """(mask root, source): the split's own masks when all exist, else random masks written to
    `scratch` (per pixel the image's class or background K), one per sample."""
    own = mask_root_for(data_root)
    if own.is_dir() and all(mask_path(own, path).is_file() for path, _ in samples):
        return own, f"masks from {own}"
    rng = np.random.default_rng(seed)
    root = Path(scratch) / "masks"
    for path, label in samples:
        values = np.where(rng.random((resolution, resolution)) < 0.5, label, num_classes).astype(np.uint8)
        save_png_atomic(mask_path(root, path), values)
    return root, "random masks"


def read_masks(mask_root, samples):
    masks, shape = [], None
    for path, _ in samples:
        file = mask_path(mask_root, path)
        with Image.open(file) as image:
            mask = np.array(image, dtype=np.uint8)
        if shape is not None and mask.shape != shape:
            raise ValueError(f"masks differ in size: {file} is {mask.shape}, earlier ones are {shape}")
        shape = mask.shape
        masks.append(torch.from_numpy(mask))
    return torch.stack(masks)


def decode_training_subset(root, resolution, subset, mask_root, workers):
    """What InMemoryBatches keeps on the device (uint8 images, labels, masks of the subset), and
    the images/s of decoding them as train.py does (decode_all with workers; masks read apart)."""
    dataset = restrict(open_split(root, resolution, train_size=default_train_size(resolution)), subset)
    start = time.perf_counter()
    decoded = decode_all(dataset, batch_size=256, workers=workers, progress=False)
    rate = len(subset) / (time.perf_counter() - start)
    decoded["masks"] = read_masks(mask_root, dataset.samples)
    return decoded, rate


def cycled(subset, count):
    """`count` dataset indices walking through `subset` again and again."""
    return [subset[i % len(subset)] for i in range(count)]


def round_up(count, multiple):
    return -(-count // multiple) * multiple


# -- our pipeline ---------------------------------------------------------------------------
def with_classes(decoded, old_classes, classes, seed=0):
    """The decoded subset relabelled for a head of `classes` classes: random labels, each mask's
    foreground given its image's label, its background the value `classes` (mask contract), ignored
    pixels kept."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, decoded["labels"].shape, generator=generator).to(decoded["labels"].dtype)
    masks = decoded["masks"]
    relabelled = torch.where(masks == old_classes, torch.full_like(masks, classes),
                             labels.view(-1, 1, 1).to(masks.dtype).expand_as(masks))
    relabelled[masks == IGNORE_INDEX] = IGNORE_INDEX
    return {**decoded, "labels": labels, "masks": relabelled}


def no_phase(name):
    """The phase hook of a step timed as a whole: enters nothing."""
    return contextlib.nullcontext()


def ours_training_step(model, task, data, cfg, device, amp, channels_last=False, compiled=False, fused_sgd=False,
                       phase=no_phase):
    """Our training step on a copy of `model`, as train_loop runs it between its logs:
    InMemoryBatches -> autocast step -> SGD. The head of `model` sets the classes; when they are not
    the classes of `data` (prepare_data's), its labels and masks are relabelled at random
    (with_classes), e.g. for the 101-class dense head of CIFAR-100 on the synthetic data.
    phase(name) is entered around each of TRAIN_PHASES (bench/profile_step.py: record_function)."""
    model = copy.deepcopy(model).to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = DenseLogits(model) if task == "train_dfb" else model
    if compiled:
        net = torch.compile(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9, **({"fused": True} if fused_sgd else {}))
    num_classes = model.head_size - (1 if task == "train_dfb" else 0)
    decoded = data["decoded"]
    if num_classes != data["num_classes"]:
        decoded = with_classes(decoded, data["num_classes"], num_classes, seed=cfg.seed)
    if task != "train_dfb":
        decoded = {k: v for k, v in decoded.items() if k != "masks"}
    indices = GlobalBatchIndices(len(decoded["labels"]), cfg.batch, seed=cfg.seed)
    batches = iter(InMemoryBatches(decoded, indices, cfg.resolution, device, seed=cfg.seed))

    def step():
        with phase("data"):
            images, labels, masks = next(batches)
        with phase("forward + loss"), autocast(device, amp):
            if task == "train_dfb":
                loss, _ = dense_step(net, images, masks, pixel_accuracy=False)  # as train_loop between its logs
            else:
                loss, _ = classification_step(net, images, labels, num_classes, 0.0, None)
        # No loss.item() here: train_loop reads the loss only every log_every steps, and the
        # timed region ends with a synchronize.
        with phase("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with phase("optimiser"):
            optimizer.step()

    return step


def ours_train(model, task, data, cfg, device, amp, channels_last=False, compiled=False):
    """Images/s of our training step (ours_training_step)."""
    step = ours_training_step(model, task, data, cfg, device, amp, channels_last=channels_last, compiled=compiled)
    return measure(step, cfg.batch, cfg.warmup, cfg.steps, cfg.repeats, device)


def _timed_stream(model, root, subset, cfg, device, images, step_fn, end_of_repeat=None):
    """Images/s of step_fn(model, images) over test-time batches of our loader (decode + resize)."""
    model = copy.deepcopy(model).to(device).eval()
    per_repeat = round_up(images, cfg.batch)
    batches = eval_batches(open_split(root, cfg.resolution), cfg.resolution, device, cfg.batch, cfg.workers,
                           cycled(subset, cfg.batch * cfg.warmup + per_repeat * cfg.repeats))

    @torch.no_grad()
    def step():
        step_fn(model, next(batches)[0])

    try:
        result = measure(step, cfg.batch, cfg.warmup, per_repeat // cfg.batch, cfg.repeats, device, end_of_repeat)
    finally:
        batches.close()
    return {**result, "images_per_repeat": per_repeat}


def ours_cam(model, root, subset, cfg, device, amp):
    """Images/s of make_cam's batched path: decode + resize, predict, multi-scale CAM, masks to CPU."""
    def step(model, images):
        with autocast(device, amp):
            masks, _, _ = pseudo_masks(model, images, scales=DEFAULT_SCALES)
        masks.cpu().numpy()
    return _timed_stream(model, root, subset, cfg, device, cfg.cam_images, step)


def ours_extract(model, root, subset, cfg, device, amp):
    """Images/s of engine_eval.extract's loop: decode + resize, logits and features, to CPU."""
    collected = []

    def step(model, images):
        with autocast(device, amp):
            logits, features = model.forward_with_features(images)
        collected.append((logits.float(), features.float()))

    def to_host():
        torch.cat([logits for logits, _ in collected]).cpu().numpy()
        torch.cat([features for _, features in collected]).cpu().numpy()
        collected.clear()

    return _timed_stream(model, root, subset, cfg, device, cfg.eval_images, step, to_host)


# -- the official-style loop ----------------------------------------------------------------
def official_train(model, task, root, samples, mask_root, cfg, device):
    model = official.release_model(model).to(device).train()
    if task == "train_dfb":
        dataset = official.masked_train_folder(root, mask_root, samples, cfg.resolution)
        net = official.parallel(official.DenseForward(model), device)
    else:
        dataset = official.train_folder(root, samples, cfg.resolution)
        net = official.parallel(model, device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.003, momentum=0.9)
    loader = official.shuffled_loader(dataset, cfg.batch, cfg.workers, cfg.warmup + cfg.steps * cfg.repeats,
                                      device, seed=cfg.seed)
    batches = iter(loader)

    def step():
        item = next(batches)
        images, targets = (item[0], item[1]) if task == "train_dfb" else item
        official.train_step(net, optimizer, images, targets, device)

    # The loader's workers stop when `batches` is garbage-collected on return.
    return measure(step, cfg.batch, cfg.warmup, cfg.steps, cfg.repeats, device)


def official_cam(model, root, samples, cfg, device, num_classes):
    model = official.release_model(model).to(device).eval()
    classify_net = official.parallel(model, device)
    cam_net = official.parallel(official.CamForward(model), device)
    per_repeat = round_up(cfg.cam_images, cfg.batch)  # as many images as ours
    dataset = official.test_folder(root, samples, cfg.resolution)
    positions = cycled(list(range(len(samples))), cfg.warmup + per_repeat * cfg.repeats)
    images = iter(official.ordered_loader(dataset, positions, 1, cfg.workers, device))

    def step():
        image, _ = next(images)
        official.cam_one_image(classify_net, cam_net, image.to(device), num_classes)

    result = measure(step, 1, cfg.warmup, per_repeat, cfg.repeats, device)
    return {**result, "images_per_repeat": per_repeat}


def official_extract(model, root, samples, cfg, device):
    model = official.release_model(model).to(device).eval()
    feature_net = official.parallel(official.FeatureForward(model), device)
    per_repeat = round_up(cfg.eval_images, cfg.batch)
    dataset = official.test_folder(root, samples, cfg.resolution)
    positions = cycled(list(range(len(samples))), cfg.batch * cfg.warmup + per_repeat * cfg.repeats)
    batches = iter(official.ordered_loader(dataset, positions, cfg.batch, cfg.workers, device))
    collected = []

    def step():
        images, _ = next(batches)
        collected.append(official.extract_batch(feature_net, images, device))

    result = measure(step, cfg.batch, cfg.warmup, per_repeat // cfg.batch, cfg.repeats, device, collected.clear)
    return {**result, "images_per_repeat": per_repeat}


# -- variants -------------------------------------------------------------------------------
def verdict(ratio):
    if ratio >= 1 + VARIANT_NOISE:
        return "helps"
    if ratio <= 1 - VARIANT_NOISE:
        return "slower"
    return "no clear difference"


def measure_variants(cfg, models, data, device, amp, baseline):
    """Our training steps with channels_last and/or torch.compile, against the plain ones.
    A variant that fails (e.g. no compiler for torch.compile) is reported, not fatal."""
    chosen = [name for name, on in (("channels_last", cfg.channels_last), ("compile", cfg.compile)) if on]
    rows = []
    for name in chosen:
        for task in ("train_cls", "train_dfb"):
            row = {"stage": task, "variant": name}
            try:
                result = ours_train(models[task], task, data, cfg, device, amp,
                                    channels_last=name == "channels_last", compiled=name == "compile")
            except Exception as error:  # reported in the table and the JSON
                row.update(error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            else:
                ratio = result["images_per_s"] / baseline[task]
                row.update(result, vs_default=ratio, verdict=verdict(ratio))
                print(f"[bench] {dict(STAGES)[task]} + {name}: {result['images_per_s']:.1f} img/s", flush=True)
            rows.append(row)
    return rows


# -- projection -----------------------------------------------------------------------------
def project_pipeline(rates, flops, peak_flop_per_s, pipeline=PAPER_PIPELINE):
    """Seconds per stage: images / rate for each pipeline, images x FLOPs / peak for the floor.
    A rate of None means the stage is no separate step of that pipeline (its seconds: None)."""
    stages, total = [], {"ours_s": 0.0, "official_s": 0.0, "floor_s": 0.0}
    for label, key, images in pipeline:
        stage = {"stage": label, "row": key, "images": images,
                 "floor_s": images * flops[key] / peak_flop_per_s}
        for side in ("ours", "official"):
            rate = rates[key][side]
            stage[f"{side}_s"] = None if rate is None else images / rate
        for name in total:
            total[name] += stage[name] or 0.0
        stages.append(stage)
    return {"stages": stages, "total": total, "speedup": total["official_s"] / total["ours_s"]}


def format_duration(seconds):
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- environment and report -----------------------------------------------------------------
def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def environment(device, amp):
    info = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "ours_amp": amp, "official_precision": "fp32"}
    if device.type == "cuda":
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                    cudnn_tf32=torch.backends.cudnn.allow_tf32)
    return info


def _header(result):
    env, cfg, peak = result["environment"], result["config"], result["peak"]
    load = env["load_average_1min"]
    precision = "bf16 autocast" if env["ours_amp"] == "bf16" else "fp32"
    wrapper = "DataParallel" if env["device"].startswith("cuda") else "plain module"
    return [f"DFB speed benchmark on {env['device_name']} ({env['device']}); torch {env['torch']}, "
            f"torchvision {env['torchvision']}, {env['torch_threads']} threads, {env['cpu_count']} CPUs"
            + ("" if load is None else f", load {load:.2f}"),
            f"model {cfg['model']} at {cfg['resolution']}x{cfg['resolution']}, batch {cfg['batch']}, "
            f"{cfg['steps']} steps x {cfg['repeats']} repeats after {cfg['warmup']} warm-up, "
            f"workers {cfg['workers']}; data: {cfg['data_source']}, {cfg['mask_source']}",
            f"ours: {precision}, data on the device, batched CAM / extraction; official-style: fp32, "
            f"PIL DataLoader, {wrapper}, CAM one image per iteration",
            f"matmul peak: {peak['flop_per_s'] / 1e12:.3f} TFLOP/s ({peak['dtype']}, {peak['matmul_size']}^2); "
            f"decode into memory: {result['decode_images_per_s']:.0f} img/s"]


def _rows(result):
    lines = [f"{'stage':<24}{'ours img/s':>12}{'official img/s':>16}{'speed-up':>10}{'GFLOP/img':>11}"
             f"{'ours % peak':>13}{'official % peak':>17}"]
    for row in result["rows"]:
        lines.append(f"{row['label']:<24}{row['ours']['images_per_s']:>12.1f}"
                     f"{row['official']['images_per_s']:>16.1f}{row['speedup']:>9.2f}x"
                     f"{row['flop_per_image'] / 1e9:>11.3f}{100 * row['ours_fraction_of_peak']:>12.1f}%"
                     f"{100 * row['official_fraction_of_peak']:>16.1f}%")
    return lines


def _variants(result):
    lines = [f"{'variant of ours':<42}{'img/s':>10}{'vs default':>12}  verdict"]
    for row in result["variants"]:
        name = f"{dict(STAGES)[row['stage']]} + {row['variant']}"
        if "error" in row:
            lines.append(f"{name:<42}{'-':>10}{'-':>12}  failed: {row['error']}")
        else:
            lines.append(f"{name:<42}{row['images_per_s']:>10.1f}{row['vs_default']:>11.2f}x  {row['verdict']}")
    return lines


def _projection(result):
    projection, cfg = result["projection"], result["config"]
    lines = [f"projected paper CIFAR-10 pipeline at these rates (cls {PAPER_STEPS:,} x {PAPER_BATCH}, "
             f"CAM {PAPER_TRAIN_IMAGES:,}, DFB {PAPER_STEPS:,} x {PAPER_BATCH}, "
             f"evaluation {sum(PAPER_EVAL_SETS.values()):,} images):",
             f"{'stage':<26}{'images':>10}{'ours':>11}{'official':>11}{'FLOP floor':>12}"]
    for stage in projection["stages"] + [dict(projection["total"], stage="total", images=None)]:
        images = f"{stage['images']:,}" if stage["images"] else ""
        lines.append(f"{stage['stage']:<26}{images:>10}{format_duration(stage['ours_s']):>11}"
                     f"{format_duration(stage['official_s']):>11}{format_duration(stage['floor_s']):>12}")
    lines.append(f"pipeline speed-up {projection['speedup']:.2f}x")
    if (cfg["model"], cfg["resolution"]) != ("BiT-M-R50x1", 128):
        lines.append(f"note: the paper uses BiT-M-R50x1 at 128; this projection is for {cfg['model']} at "
                     f"{cfg['resolution']}.")
    return lines


def render(result):
    """The printed report: environment, the table, variants, projection."""
    sections = [_header(result), _rows(result)]
    if result["variants"]:
        sections.append(_variants(result))
    sections.append(_projection(result))
    return "\n\n".join("\n".join(section) for section in sections)


# -- command line ---------------------------------------------------------------------------
def preset_names():
    return sorted(path.name[len("benchmark_"):-len(".toml")] for path in PRESET_DIR.glob("benchmark_*.toml"))


def read_preset(name):
    """The options configs/benchmark_<name>.toml sets, {option: value}."""
    path = PRESET_DIR / f"benchmark_{name}.toml"
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from error
    unknown = sorted(set(values) - PRESET_OPTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}; a preset sets some of {sorted(PRESET_OPTIONS)}")
    return values


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=preset_names(),
                        help="defaults from configs/benchmark_<preset>.toml; explicit options win")
    parser.add_argument("--device", help=f"auto, cpu, cuda, cuda:N (default {DEFAULTS['device']})")
    parser.add_argument("--model", choices=list(KNOWN_MODELS), help=f"default {DEFAULTS['model']}")
    parser.add_argument("--resolution", type=positive_int, help="input size of training / CAM / extraction")
    parser.add_argument("--batch", type=positive_int, help="batch of training, our CAM and both extractions")
    parser.add_argument("--warmup", type=positive_int, help="untimed steps (batches; CAM images for official)")
    parser.add_argument("--steps", type=positive_int, help="timed training steps per repeat")
    parser.add_argument("--repeats", type=positive_int, help="timed repeats; the median is reported")
    parser.add_argument("--cam_images", type=positive_int, help="CAM images per repeat (rounded up to the batch)")
    parser.add_argument("--eval_images", type=positive_int, help="extraction images per repeat (rounded up)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of both pipelines")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="also measure torch.compile")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction,
                        help="also measure the channels_last memory format")
    parser.add_argument("--amp", choices=["bf16", "none"], help="ours: default bf16 on GPUs, none on the CPU (or the preset's)")
    parser.add_argument("--threads", type=positive_int,
                        help="torch CPU threads (default: torch's choice); 1 avoids OpenMP threads "
                             "spin-waiting for a core that another process holds on a shared CPU")
    parser.add_argument("--data", help="an ImageFolder split (default: synthetic random 32x32 PNGs in a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every number to this JSON file")
    args = parser.parse_args(argv)
    try:
        preset = read_preset(args.preset) if args.preset else {}
    except (OSError, ValueError) as error:
        parser.error(f"--preset {args.preset}: {error}")
    for key, value in {**DEFAULTS, **preset}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    try:
        args.device = resolve_device(args.device)
    except RuntimeError as error:
        message = str(error)
        parser.error(message if message.startswith("--device") else f"--device {args.device}: {message}")
    if args.data is not None and not Path(args.data).is_dir():
        parser.error(f"--data {args.data}: no such folder (expected an ImageFolder split <data>/<class>/<image>)")
    return args


def prepare_data(cfg, scratch):
    """The images both pipelines read (a subset of the split), masks for the dense rows, and the
    subset decoded into memory for ours."""
    if cfg.data is None:
        count = max(4 * cfg.batch, cfg.cam_images, cfg.eval_images)
        root = write_synthetic_folder(Path(scratch) / "train", count, cfg.seed)
        source = f"synthetic {SYNTHETIC_SIZE}x{SYNTHETIC_SIZE} random PNGs"
    else:
        root, source = Path(cfg.data), str(cfg.data)
    num_classes = len(find_classes(root))
    listing = open_split(root, cfg.resolution).samples
    subset = pick_subset(len(listing), max(4 * cfg.batch, cfg.cam_images, cfg.eval_images), cfg.seed)
    if len(subset) < cfg.batch:
        raise ValueError(f"{root} has {len(subset)} images, fewer than one batch (--batch {cfg.batch})")
    samples = [listing[i] for i in subset]
    mask_root, mask_source = masks_for(root, samples, cfg.resolution, num_classes, scratch, cfg.seed)
    decoded, decode_rate = decode_training_subset(root, cfg.resolution, subset, mask_root, cfg.workers)
    print(f"[bench] decoded {len(subset)} training images into memory at {decode_rate:.0f} img/s", flush=True)
    return dict(root=root, source=source, num_classes=num_classes, subset=subset, samples=samples,
                mask_root=mask_root, mask_source=mask_source, decoded=decoded, decode_rate=decode_rate)


def measure_ours(stage, cfg, data, models, device, amp):
    model = models["train_dfb" if stage == "train_dfb" else "train_cls"]
    if stage in ("train_cls", "train_dfb"):
        return ours_train(model, stage, data, cfg, device, amp)
    measure_fn = ours_cam if stage == "cam" else ours_extract
    return measure_fn(model, data["root"], data["subset"], cfg, device, amp)


def measure_official(stage, cfg, data, models, device):
    model = models["train_dfb" if stage == "train_dfb" else "train_cls"]
    root, samples = data["root"], data["samples"]
    if stage in ("train_cls", "train_dfb"):
        return official_train(model, stage, root, samples, data["mask_root"], cfg, device)
    if stage == "cam":
        return official_cam(model, root, samples, cfg, device, data["num_classes"])
    return official_extract(model, root, samples, cfg, device)


def run(cfg, scratch):
    device = cfg.device
    amp = cfg.amp or default_amp(device)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg, scratch)
    models = {"train_cls": create_model(cfg.model, data["num_classes"], zero_head=False).to(device),
              "train_dfb": create_model(cfg.model, data["num_classes"] + 1, zero_head=False).to(device)}
    flops = flops_per_image(models["train_cls"], models["train_dfb"], cfg.resolution, device)
    peak = measure_peak(device, amp)

    rows = []
    for stage, label in STAGES:
        ours = measure_ours(stage, cfg, data, models, device, amp)
        print(f"[bench] {label}: ours {ours['images_per_s']:.1f} img/s", flush=True)
        theirs = measure_official(stage, cfg, data, models, device)
        print(f"[bench] {label}: official-style {theirs['images_per_s']:.1f} img/s", flush=True)
        rows.append({"stage": stage, "label": label, "ours": ours, "official": theirs,
                     "speedup": ours["images_per_s"] / theirs["images_per_s"], "flop_per_image": flops[stage],
                     "ours_fraction_of_peak": ours["images_per_s"] * flops[stage] / peak["flop_per_s"],
                     "official_fraction_of_peak": theirs["images_per_s"] * flops[stage] / peak["flop_per_s"]})
    rates = {row["stage"]: {"ours": row["ours"]["images_per_s"], "official": row["official"]["images_per_s"]}
             for row in rows}
    variants = measure_variants(cfg, models, data, device, amp,
                                {stage: rate["ours"] for stage, rate in rates.items()})
    # Ours decodes the split once per training run; the official loader decodes inside its steps.
    rates["decode"] = {"ours": data["decode_rate"], "official": None}
    flops["decode"] = 0

    config = {key: getattr(cfg, key) for key in (*DEFAULTS, "data", "seed", "preset", "threads")}
    config.update(device=str(device), amp=amp, data_source=data["source"], mask_source=data["mask_source"],
                  num_classes=data["num_classes"], subset_images=len(data["subset"]))
    return {"environment": environment(device, amp), "config": config, "peak": peak, "rows": rows,
            "decode_images_per_s": data["decode_rate"], "variants": variants,
            "projection": project_pipeline(rates, flops, peak["flop_per_s"]),
            "paper_pipeline": {"steps": PAPER_STEPS, "batch": PAPER_BATCH, "train_images": PAPER_TRAIN_IMAGES,
                               "eval_sets": PAPER_EVAL_SETS}}


def main(argv=None):
    cfg = parse_args(argv)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        with tempfile.TemporaryDirectory(prefix="dfb_bench_") as scratch:
            result = run(cfg, scratch)
    finally:
        torch.set_num_threads(threads)
    result["benchmark_wall_s"] = time.perf_counter() - start
    print(render(result))
    print(f"\nbenchmark wall time {format_duration(result['benchmark_wall_s'])}")
    if cfg.json:
        write_text_atomic(cfg.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {cfg.json}")
    return result


if __name__ == "__main__":
    main()
