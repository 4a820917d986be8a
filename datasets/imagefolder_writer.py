"""Writing one data set into the ImageFolder layout ``<dataset>/<split>/<class>/<file>``, resumably.

The one writer of the preparation code (``prepare_data.py``, ``unpack_shared_data.py``): every
file is written atomically and a file already there is kept, so a run that was interrupted
continues where it stopped; ``<dataset>/.complete`` is written last, and a set that has it is
complete and is never written again (docs/CONTRACTS.md §1).

The marker is JSON: ``source`` (the file the set came from), ``images`` (count per split) and the
settings the set was made with (e.g. ``per_class``), so that a rerun with other settings is
refused rather than served the old set.
"""
import json
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from utils.base.io import atomic_path, remove_stale_temporaries, save_png_atomic, write_text_atomic

COMPLETE_MARKER = ".complete"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_CHUNK = 1 << 20


def is_complete(dataset_dir):
    return (Path(dataset_dir) / COMPLETE_MARKER).is_file()


def complete_record(dataset_dir, settings=None):
    """The marker of a complete set in `dataset_dir` ({source, images, settings...}), or None when
    the set is not complete. A set made with other `settings` is refused: its files are not the
    ones asked for."""
    marker = Path(dataset_dir) / COMPLETE_MARKER
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    changed = {key: (record.get(key), value) for key, value in (settings or {}).items() if record.get(key) != value}
    if changed:
        listed = "; ".join(f"{key} {old!r}, not {new!r}" for key, (old, new) in changed.items())
        raise ValueError(f"{dataset_dir} holds a complete set made with {listed}: delete it, or write to "
                         f"another folder")
    return record


def archive_members(archive_path, keep):
    """Yield (member path parts, file object) for every file of a tarball whose parts `keep` accepts,
    in archive order.

    The archive is streamed, never extracted as a whole, and hidden files or macOS resource
    forks are skipped. Member names that climb out of the archive are refused.
    """
    with tarfile.open(archive_path, "r|*") as tar:
        for member in tar:
            parts = [part for part in PurePosixPath(member.name).parts if part not in ("/", ".")]
            if not member.isfile() or not parts:
                continue
            if ".." in parts:
                raise ValueError(f"{archive_path}: refusing member {member.name!r} (contains '..')")
            if any(part.startswith(".") or part == "__MACOSX" for part in parts):
                continue
            if keep(parts):
                yield parts, tar.extractfile(member)


def archive_images(archive_path):
    """archive_members of the image files of a tarball."""
    return archive_members(archive_path, lambda parts: parts[-1].lower().endswith(IMAGE_EXTENSIONS))


class ImageFolderWriter:
    """Writes one data set's files, skipping those that already exist; records what belongs there.

    `finish` checks that the split folders hold nothing but the files written here (so that a
    leftover copy from another source is not silently mixed in) and writes the completion marker.
    """

    def __init__(self, dataset_dir, source, settings=None):
        self.dataset_dir = Path(dataset_dir)
        self.source = Path(source).name
        self.settings = dict(settings or {})
        self.expected = set()
        remove_stale_temporaries(self.dataset_dir)  # of a run that was killed while writing

    def _claim(self, split, class_name, filename):
        relative = PurePosixPath(split, class_name, filename)
        if relative in self.expected:
            raise ValueError(f"{self.source}: two images map to {relative}")
        self.expected.add(relative)
        return self.dataset_dir / relative

    def png(self, split, class_name, filename, pixels):
        path = self._claim(split, class_name, filename)
        if not path.exists():
            save_png_atomic(path, pixels)

    def copy(self, split, class_name, filename, stream):
        path = self._claim(split, class_name, filename)
        if not path.exists():
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                shutil.copyfileobj(stream, f, _CHUNK)

    def images_per_split(self, splits=None):
        """{split: images written or kept}, for `splits` (default: every split written, sorted)."""
        if splits is None:
            splits = sorted({relative.parts[0] for relative in self.expected})
        return {split: sum(1 for relative in self.expected if relative.parts[0] == split) for split in splits}

    def finish(self):
        counts = self.images_per_split()
        found = {PurePosixPath(path.relative_to(self.dataset_dir).as_posix())
                 for split in counts for path in (self.dataset_dir / split).rglob("*") if path.is_file()}
        strays = sorted(found - self.expected)
        if strays:
            shown = ", ".join(str(path) for path in strays[:5])
            raise ValueError(
                f"{self.dataset_dir} holds {len(strays)} files that are not part of {self.source} "
                f"(e.g. {shown}); move them away and run again")
        record = {"source": self.source, "images": counts, **self.settings}
        write_text_atomic(self.dataset_dir / COMPLETE_MARKER, json.dumps(record, indent=1) + "\n")
        return self.dataset_dir
