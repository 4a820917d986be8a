"""What scripts/reproduce_small.sh records about a run, for reporting/results_report.py.

    python -m reporting.run_record time --file OUT/stage_times.json --stage train_cls --started 1700000000.5
    python -m reporting.run_record info --file OUT/run_info.json --device auto \
        --setting MODEL=BiT-M-R50x1 --setting STEPS_CLS=3000 ...

stage_times.json maps each stage to its wall time in seconds. A stage that is resumed after an
interruption adds the time of the new attempt to what is recorded, so the figure is the time
spent on the stage in all (attempts killed outright cannot record theirs). run_info.json refuses
a rerun into the same folder with settings that would change the results (more SEEDS or
DFB_ABLATIONS are allowed: they add runs and change none).
"""
import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from utils.base.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
# Where the data is, how it is fed and on which device: a resumed run may change these
FREE_TO_CHANGE = {"SHARED_DATA", "DEVICE", "WORKERS", "CAM_BATCH", "EVAL_BATCH"}
# Lists that a resumed run may extend (more DFB seeds, more ablations) without touching what is
# done: the earlier items must stay first, in order (the first seed is the one the ablations use)
GROWABLE = {"SEEDS": str.split, "DFB_ABLATIONS": lambda text: [line.strip() for line in text.splitlines()
                                                               if line.strip()]}
# Settings the script gained after runs were made with it, with the value those runs had in effect
# (one not listed had the empty value): a run folder recorded before the setting existed may resume
# under that value
EARLIER_DEFAULTS = {"TTA": "none"}


def read_json(path, default):
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


def add_stage_time(path, stage, seconds):
    times = read_json(path, {})
    times[stage] = round(times.get(stage, 0.0) + seconds, 1)
    write_text_atomic(path, json.dumps(times, indent=2) + "\n")
    return times[stage]


def git_commit():
    """HEAD's hash, marked when the working tree differs from it (the run then used other code)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def cpu_name():
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device):
    """The card's name when the run uses a GPU, else the CPU's."""
    import torch
    from utils.base.distributed import resolve_device
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return f"{torch.cuda.get_device_name(resolved)} (CUDA {torch.version.cuda})"
    return f"CPU: {cpu_name()}"


def check_same_run(previous, settings):
    """A rerun into the same folder resumes that run, whose finished stages are kept: settings that
    change results must not differ, or the report would describe results it did not produce."""
    def grown(key, value):
        if key not in GROWABLE or key not in previous:
            return False
        old, new = GROWABLE[key](previous[key]), GROWABLE[key](value)
        return new[:len(old)] == old

    # a setting the script gained after the earlier invocation ran as its default then
    changed = {key: (previous.get(key), value) for key, value in settings.items()
               if key not in FREE_TO_CHANGE and previous.get(key, EARLIER_DEFAULTS.get(key, "")) != value
               and not grown(key, value)}
    if changed:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise ValueError(f"the run folder already holds a run made with other settings ({listed}): "
                         f"use another OUT, or delete the folder to start again")


def run_info(device, settings, previous=None):
    """What the report says about the run; `previous` is the record of an earlier invocation."""
    import torch
    if previous is not None:
        check_same_run(previous["settings"], settings)
    command = " ".join(f"{key}={shlex.quote(value)}" for key, value in settings.items())
    command += " bash scripts/reproduce_small.sh"
    started = previous["date_utc"] if previous else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    return {"command": command, "settings": settings, "git_commit": git_commit(), "device": device_name(device),
            "cpu": cpu_name(), "torch": torch.__version__, "python": platform.python_version(), "date_utc": started}


def key_value(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("time", help="add a stage's wall time to stage_times.json")
    timing.add_argument("--file", required=True)
    timing.add_argument("--stage", required=True)
    timing.add_argument("--started", type=float, required=True, help="the stage's start, in seconds since the epoch")
    info = commands.add_parser("info", help="write run_info.json")
    info.add_argument("--file", required=True)
    info.add_argument("--device", default="auto", help="the --device the stages get")
    info.add_argument("--setting", type=key_value, action="append", default=[], help="KEY=VALUE, repeatable")
    args = parser.parse_args(argv)
    if args.command == "time":
        total = add_stage_time(args.file, args.stage, time.time() - args.started)
        print(f"[time] {args.stage}: {total:.1f} s", file=sys.stderr)
    else:
        try:
            record = run_info(args.device, dict(args.setting), read_json(args.file, None))
        except ValueError as error:
            sys.exit(f"[error] {args.file}: {error}")
        write_text_atomic(args.file, json.dumps(record, indent=2) + "\n")
        print(f"[info] {record['device']}, torch {record['torch']}, commit {record['git_commit']}", file=sys.stderr)


if __name__ == "__main__":
    main()
