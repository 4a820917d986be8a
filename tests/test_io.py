"""utils/base/io.py: atomic writes leave the final file or nothing, and checkpoints are reproducible."""
import pytest
import torch

from utils.base.checkpoint import file_digest
from utils.base.io import atomic_path, torch_save_atomic


def test_two_saves_of_the_same_object_are_byte_identical(tmp_path):
    state = {"model": {"weight": torch.arange(12.0).reshape(3, 4)}, "args": {"seed": 0}}
    torch_save_atomic(state, tmp_path / "a" / "checkpoint.pth.tar")
    torch_save_atomic(state, tmp_path / "b" / "checkpoint.pth.tar")
    # the digest detectors and feature caches record
    assert file_digest(tmp_path / "a" / "checkpoint.pth.tar") == file_digest(tmp_path / "b" / "checkpoint.pth.tar")
    loaded = torch.load(tmp_path / "a" / "checkpoint.pth.tar", weights_only=False)
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"]) and loaded["args"] == {"seed": 0}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["checkpoint.pth.tar"]


def test_a_failed_block_leaves_neither_the_file_nor_its_temporary(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise ValueError("killed")
    assert list(tmp_path.iterdir()) == []
