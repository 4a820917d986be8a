"""Where the time of one training step goes: torch.profiler over our training step (the step of
bench.benchmark.ours_training_step, which bench/benchmark.py times and which runs the loop of
utils/train/engine.py), by phase and by kind of operation.

    python -m bench.profile_step                          # the cpu presets' step: ResNetV2-Tiny, 64 px,
                                                          # batch 128, 2 threads, bf16, classifier
    python -m bench.profile_step --task dfb               # the dense step
    python -m bench.profile_step --task dfb --classes 100 # the dense step of CIFAR-100 (a 101-class head)
    python -m bench.profile_step --channels_last --fused_sgd   # a lever, profiled the same way

Prints two Markdown tables: the phases of a step (data, forward + loss, backward, optimiser) in
milliseconds per step, and the operators grouped by kind (convolutions, the weight
standardisation's layer norm, GroupNorm, ReLU, copies (the autocast's dtype casts and layout
copies), pooling and resizing, loss, optimiser, other element-wise work) by their self time, with
a last row for the time inside the phases but outside every operator (Python between them). Self
times are measured on the calling thread, which waits for its OpenMP workers inside each operator,
so the rows add up to the phases' time. Timings are this machine's: run it on an idle machine.
"""
import argparse
import tempfile
import time
from collections import defaultdict
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.benchmark import TRAIN_PHASES, measure, ours_training_step, prepare_data
from models.resnetv2 import create_model

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
# the last row of the kinds table: with it, the table adds up to the phases' time
OUTSIDE_OPERATORS = "outside every operator (Python between them)"


def kind_of(name):
    return next(kind for kind, keys in KINDS if any(key in name for key in keys))


def profile_step(cfg):
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory(prefix="dfb_profile_") as scratch:
        data = prepare_data(SimpleNamespace(data=None, batch=cfg.batch, cam_images=0, eval_images=0, seed=cfg.seed,
                                            resolution=cfg.resolution, workers=0), scratch)
        num_classes = cfg.classes or data["num_classes"]
        model = create_model(cfg.model, num_classes + (1 if cfg.task == "dfb" else 0), zero_head=False)
        step = ours_training_step(model, f"train_{cfg.task}", data, cfg, device, cfg.amp,
                                  channels_last=cfg.channels_last, compiled=cfg.compile, fused_sgd=cfg.fused_sgd,
                                  phase=record_function)
        start = time.perf_counter()
        step()  # with --compile, the compilation
        first = time.perf_counter() - start
        # the step's own speed, timed as the benchmark times it; then the same steps under the
        # profiler, which adds overhead
        timed = measure(step, cfg.batch, cfg.warmup - 1, cfg.steps, cfg.repeats, device)
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(cfg.steps):
                step()
        profiled = (time.perf_counter() - start) / cfg.steps
    events = prof.key_averages()
    phases = {event.key: event.cpu_time_total / 1e3 / cfg.steps for event in events if event.key in TRAIN_PHASES}
    # a phase's own (self) time is the time inside it but outside every operator it ran: Python
    # between the operators (the model's forward, autocast, the batch code) and the hook itself
    outside = sum(event.self_cpu_time_total for event in events if event.key in TRAIN_PHASES) / 1e3 / cfg.steps
    kinds = defaultdict(float)
    for event in events:
        if event.key not in TRAIN_PHASES and not event.key.startswith("ProfilerStep"):
            kinds[kind_of(event.key)] += event.self_cpu_time_total / 1e3 / cfg.steps
    operators = sorted(((event.key, event.self_cpu_time_total / 1e3 / cfg.steps) for event in events
                        if event.key not in TRAIN_PHASES), key=lambda item: -item[1])
    return {"wall_ms": 1e3 * cfg.batch / timed["images_per_s"], "profiled_wall_ms": 1e3 * profiled,
            "first_step_s": first, "operators": operators, "phases": phases, "kinds": dict(kinds),
            "outside_operators_ms": outside, "images_per_s": timed["images_per_s"],
            "repeat_ms": [1e3 * cfg.batch / rate for rate in timed["repeats"]]}


def render(cfg, result):
    lever = ", ".join(name for name in ("channels_last", "compile", "fused_sgd") if getattr(cfg, name)) or "none"
    lines = [f"{cfg.task} training step: {cfg.model}, {cfg.classes or 10} classes, {cfg.resolution} px, batch {cfg.batch}, "
             f"{torch.get_num_threads()} threads, amp {cfg.amp}, levers: {lever}; torch {torch.__version__}",
             f"wall {result['wall_ms']:.1f} ms per step ({result['images_per_s']:.0f} img/s; median of {cfg.repeats} "
             f"x {cfg.steps} steps after {cfg.warmup}, the repeats {min(result['repeat_ms']):.1f}-"
             f"{max(result['repeat_ms']):.1f} ms), {result['profiled_wall_ms']:.1f} ms under the profiler, "
             f"whose times the tables give; the first step took {result['first_step_s']:.1f} s", "",
             "| phase | ms / step | % |", "|---|---|---|"]
    total = sum(result["phases"].values())
    lines += [f"| {phase} | {result['phases'].get(phase, 0.0):.1f} | {100 * result['phases'].get(phase, 0.0) / total:.1f} |"
              for phase in TRAIN_PHASES]
    lines += ["", "| kind of operator (self time) | ms / step | % |", "|---|---|---|"]
    rows = [(kind, result["kinds"].get(kind, 0.0)) for kind, _ in KINDS]
    rows.append((OUTSIDE_OPERATORS, result["outside_operators_ms"]))
    lines += [f"| {kind} | {value:.1f} | {100 * value / total:.1f} |" for kind, value in rows]  # of the phases' total
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
    parser.add_argument("--seed", type=int, default=0,
                        help="of the synthetic data, the model's weights, the batches and the relabelling")
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
