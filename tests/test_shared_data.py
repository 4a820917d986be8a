"""Where the real-image tests find the shared archives (tests/helpers.py, shared_data_folder): outside CI
they skip without them, under CI=true they fail with one line naming where they looked; and no tracked
file outside tests names an absolute folder of one machine."""
import os
import subprocess

import pytest

from datasets.shared_archives import shared_archives
from tests.helpers import REPO, shared_data_folder


def complete_folder(folder, leave_out=()):
    folder.mkdir()
    for index, name in enumerate(shared_archives()):
        if name not in leave_out:
            (folder / (name + ".gz" if index % 2 else name)).write_bytes(b"")  # either form counts
    return folder


def test_a_complete_folder_is_found_from_an_absolute_or_a_checkout_relative_path(tmp_path, monkeypatch):
    folder = complete_folder(tmp_path / "shared")
    assert shared_data_folder({"DFB_SHARED_DATA": str(folder), "CI": "true"}) == folder.resolve()
    monkeypatch.chdir(tmp_path / "shared")  # relative to the checkout, as .ci/run's ../shared/data, not to here
    relative = os.path.relpath(folder, REPO)
    assert relative.startswith("..") and shared_data_folder({"DFB_SHARED_DATA": relative}) == folder.resolve()


@pytest.mark.parametrize("case", ["unset", "missing", "incomplete"])
def test_without_the_shared_data_the_tests_skip_but_fail_under_ci(tmp_path, case):
    environ, where = {}, "DFB_SHARED_DATA is unset"
    if case == "missing":
        environ, where = {"DFB_SHARED_DATA": str(tmp_path / "nowhere")}, f"looked in {tmp_path / 'nowhere'}, not a folder"
    elif case == "incomplete":
        folder = complete_folder(tmp_path / "shared", leave_out=("tin_train.tar",))
        environ, where = {"DFB_SHARED_DATA": str(folder)}, f"looked in {folder}, which lacks tin_train.tar (or .gz)"

    with pytest.raises(pytest.skip.Exception) as skipped:
        shared_data_folder(environ)
    assert where in str(skipped.value) and "under CI=true they fail" in str(skipped.value)

    with pytest.raises(pytest.fail.Exception) as failed:
        shared_data_folder(dict(environ, CI="true"))
    message = str(failed.value)
    assert where in message and message.startswith("real-image tests under CI=true") and "\n" not in message


def test_ci_looks_for_the_shared_data_beside_the_checkout_and_cannot_skip():
    script = (REPO / ".ci" / "run").read_text()
    assert "export CI=${CI:-true}" in script and "DFB_SHARED_DATA=${DFB_SHARED_DATA:-../shared/data}" in script


def test_no_tracked_file_outside_tests_names_a_folder_of_one_machine():
    found = subprocess.run(["git", "grep", "-I", "-n", "-E", r"(/work/|/home/|/root/|/Users/|/tmp/)", "--", ".",
                            ":!tests"], cwd=REPO, capture_output=True, text=True)
    assert found.returncode == 1 and found.stdout == "", found.stdout  # 1: git grep found nothing
