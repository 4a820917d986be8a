"""Which flags define a run: declared once, where the flag is declared, in the CLI's parser.

A CLI tags an argument with `defines_run(parser.add_argument(...))`; `run_defining_flags(parser)`
lists the tagged ones, and the stages take that list instead of keeping their own: train.py resumes
a checkpoint only with the same values of them (utils/train/resume.py), make_cam.py keeps masks only when
the folder's provenance.json holds the same values (utils/cam/main.py). So adding a flag that
changes what a run computes is adding the tag, nothing else.
"""
import argparse
from collections.abc import Sequence

_TAG = "defines_run"


def defines_run(action: argparse.Action) -> argparse.Action:
    """Tag a parser argument (what `add_argument` returned) as run-defining; returns it."""
    setattr(action, _TAG, True)
    return action


def run_defining_flags(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """The destinations (`args` attribute names) of the tagged arguments, in parser order."""
    # argparse has no public list of a parser's arguments; _actions has been that list since Python 2.7
    return tuple(action.dest for action in parser._actions if getattr(action, _TAG, False))


def run_settings(args: argparse.Namespace, flags: Sequence[str], **resolved) -> dict:
    """The values of `flags` in `args`, in the order of `flags`. `resolved` replaces a flag's value
    by what the run made of it (e.g. --resolution left out and taken from the checkpoint)."""
    return {flag: resolved[flag] if flag in resolved else getattr(args, flag) for flag in flags}
