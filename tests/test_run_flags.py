"""Which flags define a run is declared once, by a tag in the CLI's parser (utils/base/run_flags.py):
train.py's resume check and make_cam.py's mask provenance read that tag and nothing else. Also
the run context every stage starts with."""
import argparse
import hashlib

import pytest
import torch

import make_cam
import train
from utils.base.distributed import RunContext, start_run
from utils.base.run_flags import defines_run, run_defining_flags, run_settings
from utils.cam.main import mask_provenance, prepare_mask_folder
from utils.train.resume import check_same_settings

TRAIN_ARGV = ["--task", "dfb", "--datadir", "d", "--name", "n"]


def changed(value):
    """A value that differs from `value` and from any value a flag can hold."""
    return ("changed", value)


def checkpoint_of(args):
    return {"args": dict(vars(args))}


def test_every_run_defining_flag_of_train_is_checked_on_resume():
    args = train.parse_args(TRAIN_ARGV)
    check_same_settings(checkpoint_of(args), args, train.RUN_DEFINING_FLAGS, "ckpt")  # nothing changed
    for flag in train.RUN_DEFINING_FLAGS:
        other = argparse.Namespace(**{**vars(args), flag: changed(getattr(args, flag))})
        with pytest.raises(ValueError, match=f"belongs to a run with --{flag} "):
            check_same_settings(checkpoint_of(args), other, train.RUN_DEFINING_FLAGS, "ckpt")


def test_flags_without_the_tag_may_change_on_resume(capsys):
    args = train.parse_args(TRAIN_ARGV)
    free = [flag for flag in vars(args) if flag not in train.RUN_DEFINING_FLAGS]
    assert {"base_lr", "device", "workers", "stop_after", "test_datadir"} <= set(free)
    other = argparse.Namespace(**{**vars(args), **{flag: changed(getattr(args, flag)) for flag in free}})
    check_same_settings(checkpoint_of(args), other, train.RUN_DEFINING_FLAGS, "ckpt")
    assert "with --base_lr" in capsys.readouterr().out  # a changed rate is allowed, and said


def test_tagging_a_new_train_flag_is_all_it_takes():
    parser = train.build_parser()
    defines_run(parser.add_argument("--new_setting", type=int, default=1))
    flags = run_defining_flags(parser)
    assert flags == (*train.RUN_DEFINING_FLAGS, "new_setting")
    args = parser.parse_args(TRAIN_ARGV)
    stored = checkpoint_of(args)
    args.new_setting = 2
    with pytest.raises(ValueError, match=r"--new_setting 1 \(now 2\)"):
        check_same_settings(stored, args, flags, "ckpt")


def test_tagging_a_new_make_cam_flag_is_all_it_takes(tmp_path):
    parser = make_cam.build_parser()
    defines_run(parser.add_argument("--new_setting", type=int, default=1))
    flags = run_defining_flags(parser)
    classifier = tmp_path / "cls.pth.tar"
    classifier.write_bytes(b"weights")
    args = parser.parse_args(["--dataset", "d", "--model_path", str(classifier), "--head_size", "3"])
    provenance = mask_provenance(args.model_path, run_settings(args, flags, resolution=32))
    assert provenance["new_setting"] == 1
    out, mask = tmp_path / "masks", tmp_path / "masks" / "a" / "0.png"
    prepare_mask_folder(out, [mask], provenance, overwrite=False)  # an empty folder takes the provenance
    mask.parent.mkdir(parents=True)
    mask.write_bytes(b"")
    args.new_setting = 2
    with pytest.raises(ValueError, match="made with another new_setting"):
        prepare_mask_folder(out, [mask], mask_provenance(args.model_path, run_settings(args, flags, resolution=32)),
                            overwrite=False)


def test_mask_provenance_is_the_classifier_digest_and_the_tagged_flags_of_the_contract(tmp_path):
    classifier = tmp_path / "cls.pth.tar"
    classifier.write_bytes(b"weights")
    args = make_cam.parse_args(["--dataset", "d", "--model_path", str(classifier), "--head_size", "3", "--labeled"])
    # --resolution left out: the value the run took from the checkpoint is recorded
    provenance = mask_provenance(args.model_path, run_settings(args, make_cam.RUN_DEFINING_FLAGS, resolution=64))
    # docs/CONTRACTS.md §2, in its order
    assert list(provenance) == ["classifier_sha256", "labeled", "scales", "sigma", "threshold", "resolution"]
    assert provenance == {"classifier_sha256": hashlib.sha256(b"weights").hexdigest(), "labeled": True,
                          "scales": [1.0, 0.5, 1.5, 2.0], "sigma": 4.0, "threshold": 0.5, "resolution": 64}


def test_run_context_of_a_single_process():
    assert start_run("cpu") == RunContext(device=torch.device("cpu"), rank=0, world_size=1, amp="none", is_main=True)
    assert start_run("cpu", "bf16").amp == "bf16"  # what --amp asks for wins over the device's default
