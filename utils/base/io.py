"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

# mkstemp creates files readable by the owner only; published files get the usual mode.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
# every temporary of atomic_path below a folder: ".<stem>.<random>.tmp<suffix>", where the
# suffix may be empty (e.g. the temporary of a ".complete" marker)
TEMPORARY_GLOB = "**/.*.tmp*"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the suffix of `path`, so writers that pick a format from the
    extension (PIL, numpy, matplotlib) behave as with the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder, pattern=TEMPORARY_GLOB):
    """Delete the temporaries of `atomic_path` that a killed process left under `folder` (glob
    `pattern`); returns how many. Only where no other process is writing at the same time."""
    stale = [path for path in Path(folder).glob(pattern) if path.is_file()] if Path(folder).is_dir() else []
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return len(stale)


def remove_stale_temporaries_of(path):
    """Delete the temporaries a killed writer of `path` left beside it (e.g. a half-saved checkpoint)."""
    path = Path(path)
    return remove_stale_temporaries(path.parent, f".{path.stem}.*.tmp{path.suffix}")


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy_atomic(path, array):
    import numpy as np
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def torch_save_atomic(obj, path):
    """torch.save through a file object: with a file name, torch names the zip's inner folder after
    it, and the random temporary name would make two saves of the same object differ in bytes
    (and in the sha256 that detectors and feature caches record)."""
    import torch
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as file:
                torch.save(obj, file)
        except (RuntimeError, OSError) as error:  # a failed write (disk full), from torch's zip writer or the file
            free = shutil.disk_usage(Path(path).parent).free / 2 ** 20
            raise OSError(f"could not write {path} ({' '.join(str(error).split())[:160]}); is the disk full? "
                          f"{free:.0f} MiB free there") from error


def save_png_atomic(path, array):
    """Save a uint8 array ([H, W] or [H, W, 3]) as PNG."""
    from PIL import Image
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
