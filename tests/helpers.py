"""Scaffolding shared by the test modules: running a CLI's main() in process, the one-line error
check of docs/ROBUSTNESS.md, a dfb checkpoint with random weights (alone or with a small
synthetic benchmark to evaluate it on), and where the real-image tests find the shared archives."""
from pathlib import Path

import pytest
import torch

from datasets.shared_archives import find_archive, shared_archives
from datasets.synthetic import generate_benchmark

from models.resnetv2 import create_model
from utils.base.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA_VARIABLE = "DFB_SHARED_DATA"


def shared_data_folder(environ):
    """The folder of the shared archives for the real-image tests: DFB_SHARED_DATA of `environ` (a relative
    path is taken from the checkout, as .ci/run's ../shared/data), holding every archive the project reads
    (.tar or .tar.gz). Without it those tests skip, but under CI=true they fail, so that CI cannot pass
    without having run them."""
    value = environ.get(SHARED_DATA_VARIABLE)
    if not value:
        problem = f"{SHARED_DATA_VARIABLE} is unset (.ci/run sets it to ../shared/data, beside the checkout)"
    else:
        folder = (REPO / value).resolve()  # an absolute value stays as it is
        missing = [name for name in shared_archives() if find_archive(folder, name) is None]
        if not missing:
            return folder
        problem = (f"{SHARED_DATA_VARIABLE}={value}: looked in {folder}, " +
                   (f"which lacks {', '.join(missing)} (or .gz)" if folder.is_dir() else "not a folder"))
    if environ.get("CI") == "true":
        pytest.fail(f"real-image tests under CI=true: {problem}", pytrace=False)
    pytest.skip(f"{problem}; the real-image tests skip outside CI (under CI=true they fail)")


def run_cli(module, argv, capsys):
    """(exit status, stdout, stderr) of a CLI's main() run in this process."""
    try:
        module.main(argv)
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_input_error(module, argv, capsys, *fragments):
    """The CLI stops with status 2 and one line on stderr that holds every fragment."""
    status, _, err = run_cli(module, argv, capsys)
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error (")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def random_dfb_checkpoint(path, classes, seed):
    """A ResNetV2-Tiny dfb checkpoint (32 px) with random weights and a random, non-zero head."""
    torch.manual_seed(seed)
    model = create_model("ResNetV2-Tiny", head_size=len(classes) + 1)
    torch.nn.init.normal_(model.head.conv.weight, std=0.5)  # a zero head would make every score constant
    save_checkpoint(path, model_state=model.state_dict(), optim_state={}, step=0, args={}, task="dfb",
                    model_name="ResNetV2-Tiny", classes=classes, resolution=32, finished=True)
    return path


def synthetic_world(root):
    """(sets, classes, checkpoint): a small synthetic benchmark under root/data (6 classes x 12
    training and 4 test images, 16 images per OOD set, 32 px) and a random dfb checkpoint for it."""
    sets = generate_benchmark(root / "data", seed=0, size=32, n_train_per_class=12, n_test_per_class=4,
                              n_ood=16, progress=False)
    classes = sorted(p.name for p in Path(sets["id_train"]).iterdir() if p.is_dir())
    return sets, classes, random_dfb_checkpoint(root / "dfb.pth.tar", classes, seed=0)
