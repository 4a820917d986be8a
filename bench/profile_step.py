"""Where the time of one training step goes: torch.profiler over our training step (the one
bench/benchmark.py times and utils/train/engine.py runs), by phase and by kind of operation.

    python -m bench.profile_step                          # the cpu presets' step: ResNetV2-Tiny, 64 px,
                                                          # batch 128, 2 threads, bf16, classifier
    python -m bench.profile_step --task dfb               # the dense step
    python -m bench.profile_step --task dfb --classes 100 # the dense step of CIFAR-100 (a 101-class head)
    python -m bench.profile_step --channels_last --fused_sgd   # a lever, profiled the same way

Prints two Markdown tables: the phases of a step (data, forward + loss, backward, optimiser) in
milliseconds per step, and the operators grouped by kind (convolutions, the weight
standardisation's layer norm, GroupNorm, ReLU, copies (the autocast's dtype casts and layout
copies), pooling and resizing,
loss, optimiser, other element-wise work) by their self time. Self times are measured on the
calling thread, which waits for its OpenMP workers inside each operator, so they add up to the
step's wall time. Timings are this machine's: run it on an idle machine.
"""
import argparse
import copy
import statistics
import tempfile
import time
from collections import defaultdict
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.benchmark import prepare_data
from datasets.masks import IGNORE_INDEX
from datasets.sources import GlobalBatchIndices, InMemoryBatches
from models.resnetv2 import create_model
from utils.base.runtime import autocast
from utils.train.engine import DenseLogits, classification_step, dense_step

PHASES = ("data", "forward + loss", "backward", "optimiser")
# kind of operator -> substrings of aten operator names; the first kind that matches wins
KINDS = (
    ("convolution", ("convolution", "conv2d", "mkldnn_conv")),
    ("weight standardisation (layer_norm)", ("layer_norm",)),
    ("GroupNorm", ("group_norm",)),
    ("ReLU", ("relu", "threshold_backward")),
    ("optimiser", ("_foreach", "sgd")),
    ("loss", ("log_softmax", "nll_loss", "cross_entropy")),
    ("pooling / resize", ("pool", "upsample", "interpolate", "grid_sampler", "mean")),
    ("copies: dtype casts and layout (copy_)", ("_to_copy", "copy_", "aten::to")),
    ("other element-wise / memory", ("",)),
)


def kind_of(name):
    return next(kind for kind, keys in KINDS if any(key in name for key in keys))


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


def build_step(cfg, data, device):
    """The step of bench.benchmark.ours_train, split into phases by record_function."""
    num_classes = cfg.classes or data["num_classes"]
    head = num_classes + (1 if cfg.task == "dfb" else 0)
    model = create_model(cfg.model, head, zero_head=False).to(device).train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net = DenseLogits(model) if cfg.task == "dfb" else model
    if cfg.compile:
        net = torch.compile(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9,
                                **({"fused": True} if cfg.fused_sgd else {}))
    decoded = copy.copy(data["decoded"])
    if num_classes != data["num_classes"]:
        decoded = with_classes(decoded, data["num_classes"], num_classes)
    if cfg.task != "dfb":
        decoded.pop("masks", None)
    batches = iter(InMemoryBatches(decoded, GlobalBatchIndices(len(decoded["labels"]), cfg.batch, seed=0),
                                   cfg.resolution, device, seed=0))

    def step():
        with record_function("data"):
            images, labels, masks = next(batches)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        with record_function("forward + loss"), autocast(device, cfg.amp):
            if cfg.task == "dfb":
                loss, _ = dense_step(net, images, masks, pixel_accuracy=False)  # as train_loop between its logs
            else:
                loss, _ = classification_step(net, images, labels, num_classes, 0.0, None)
        with record_function("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("optimiser"):
            optimizer.step()

    return step


def profile_step(cfg):
    device = torch.device("cpu")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="dfb_profile_") as scratch:
        data = prepare_data(SimpleNamespace(data=None, batch=cfg.batch, cam_images=0, eval_images=0, seed=0,
                                            resolution=cfg.resolution, workers=0), scratch)
        step = build_step(cfg, data, device)
        start = time.perf_counter()
        step()  # with --compile, the compilation
        first = time.perf_counter() - start
        for _ in range(cfg.warmup - 1):
            step()
        walls = []  # the step's own speed, then the same steps under the profiler, which adds overhead
        for _ in range(cfg.repeats):
            start = time.perf_counter()
            for _ in range(cfg.steps):
                step()
            walls.append((time.perf_counter() - start) / cfg.steps)
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(cfg.steps):
                step()
        profiled = (time.perf_counter() - start) / cfg.steps
    events = prof.key_averages()
    phases = {event.key: event.cpu_time_total / 1e3 / cfg.steps for event in events if event.key in PHASES}
    kinds = defaultdict(float)
    for event in events:
        if event.key not in PHASES and not event.key.startswith("ProfilerStep"):
            kinds[kind_of(event.key)] += event.self_cpu_time_total / 1e3 / cfg.steps
    wall = statistics.median(walls)
    operators = sorted(((event.key, event.self_cpu_time_total / 1e3 / cfg.steps) for event in events
                        if event.key not in PHASES), key=lambda item: -item[1])
    return {"wall_ms": 1e3 * wall, "profiled_wall_ms": 1e3 * profiled, "first_step_s": first, "operators": operators, "phases": phases, "kinds": dict(kinds),
            "images_per_s": cfg.batch / wall}


def render(cfg, result):
    lever = ", ".join(name for name in ("channels_last", "compile", "fused_sgd") if getattr(cfg, name)) or "none"
    lines = [f"{cfg.task} training step: {cfg.model}, {cfg.classes or 10} classes, {cfg.resolution} px, batch {cfg.batch}, "
             f"{torch.get_num_threads()} threads, amp {cfg.amp}, levers: {lever}; torch {torch.__version__}",
             f"wall {result['wall_ms']:.1f} ms per step ({result['images_per_s']:.0f} img/s; median of {cfg.repeats} "
             f"x {cfg.steps} steps after {cfg.warmup}), {result['profiled_wall_ms']:.1f} ms under the profiler, "
             f"whose times the tables give; the first step took {result['first_step_s']:.1f} s", "",
             "| phase | ms / step | % |", "|---|---|---|"]
    total = sum(result["phases"].values())
    lines += [f"| {phase} | {result['phases'].get(phase, 0.0):.1f} | {100 * result['phases'].get(phase, 0.0) / total:.1f} |"
              for phase in PHASES]
    lines += ["", "| kind of operator (self time) | ms / step | % |", "|---|---|---|"]
    total = sum(result["kinds"].values())
    for kind, _ in KINDS:
        value = result["kinds"].get(kind, 0.0)
        lines.append(f"| {kind} | {value:.1f} | {100 * value / total:.1f} |")
    if cfg.top:
        lines += ["", f"| the {cfg.top} largest operators (self time) | kind | ms / step |", "|---|---|---|"]
        lines += [f"| {name} | {kind_of(name)} | {ms:.1f} |" for name, ms in result["operators"][:cfg.top]]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("cls", "dfb"), default="cls")
    parser.add_argument("--model", default="ResNetV2-Tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", choices=("bf16", "none"), default="bf16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat, and profiled")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--classes", type=int, default=None,
                        help="classes of the head (default: the 10 of the synthetic data); labels and masks relabelled")
    parser.add_argument("--top", type=int, default=0, help="also list the N operators with the largest self time")
    parser.add_argument("--fused_sgd", action="store_true", help="torch.optim.SGD(fused=True)")
    args = parser.parse_args(argv)
    for name in ("resolution", "batch", "threads", "steps", "repeats", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def main(argv=None):
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    result = profile_step(cfg)
    print(render(cfg, result))
    return result


if __name__ == "__main__":
    main()
