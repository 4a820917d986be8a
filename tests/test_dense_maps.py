"""eval.py's dense_maps.npz (utils/evaluate/dense_maps.py): which images, the masks against the network's
own forward, and the report's grid drawn from the file alone (no network, no data folder)."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
from datasets.batch_augment import test_resize
from datasets.folder import list_samples
from models.loading import load_network
from reporting import results_report
from tests.helpers import synthetic_world
from tests.test_reproduce_small import synthetic_run
from utils.evaluate.dense_maps import DENSE_MAPS_FILE, load_dense_maps, spread_over_classes


def test_examples_take_the_classes_in_turn():
    labels = [0, 0, 0, 1, 1, 2]  # dataset order: by class, then file
    assert spread_over_classes(labels, 5) == [0, 3, 5, 1, 4]
    assert spread_over_classes(labels, 10) == [0, 3, 5, 1, 4, 2]  # a class that runs out leaves its turn


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense_maps")
    sets, classes, checkpoint = synthetic_world(root)
    ood = {name: sets["ood"][name] for name in ("SynthNewObjects", "SynthClutter")}
    logdir = root / "eval"
    eval_cli.main(["--model_path", str(checkpoint), "--id_train_path", str(sets["id_train"]),
                   "--id_test_path", str(sets["id_test"]), "--ood_path", *map(str, ood.values()),
                   "--logdir", str(logdir), "--device", "cpu", "--workers", "0", "--knn_k", "5",
                   "--layout_images", "0", "--dense_maps", "7"])
    return dict(sets=sets, ood=ood, checkpoint=checkpoint, logdir=logdir)


def test_eval_saves_the_dense_prediction_of_images_spread_over_each_sets_classes(evaluated):
    maps, num_classes = load_dense_maps(evaluated["logdir"] / DENSE_MAPS_FILE)
    id_test = json.loads((evaluated["logdir"] / "accuracy.json").read_text())["id_dataset"]
    folders = {id_test: evaluated["sets"]["id_test"], **evaluated["ood"]}
    assert [name for name, _ in maps] == list(folders) and num_classes == 6
    model, _, _, _ = load_network(evaluated["checkpoint"], expect_task="dfb")
    model.eval()
    for name, examples in maps:
        samples = list_samples(folders[name])
        # 6 classes with 4 test images each: the first image of every class, then the second of the first one
        expected = [samples[4 * k][0] for k in range(6)] + [samples[1][0]] if name == id_test else \
            [path for path, _ in samples[:7]]  # an OOD set of one class folder: its first 7 images
        images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in expected])
        assert np.array_equal(np.stack([image for image, _ in examples]), images)
        with torch.no_grad():
            dense = model.dense_logits(test_resize(torch.from_numpy(images).permute(0, 3, 1, 2), 32), upsample=True)
        masks = np.stack([mask for _, mask in examples])
        assert masks.dtype == np.uint8 and masks.shape == (7, 32, 32)
        assert np.array_equal(masks, dense.argmax(1).numpy())
    assert (evaluated["logdir"] / "figures" / "dense_maps.png").is_file()


def test_report_draws_its_dense_grid_from_the_file_alone(evaluated, tmp_path, monkeypatch):
    synthetic_run(tmp_path)
    shutil.copy(evaluated["logdir"] / DENSE_MAPS_FILE, tmp_path / "results_dfb_seed0" / DENSE_MAPS_FILE)
    shutil.copy(evaluated["logdir"] / "accuracy.json", tmp_path / "results_dfb_seed0" / "accuracy.json")
    run = results_report.Run(tmp_path)  # its run_info names no data folder, and no checkpoint is there
    drawn = results_report.dense_grid(run, tmp_path / "grid.png", "seed0")
    assert Image.open(drawn).size[0] <= 1600

    import utils.figures.plots as plots
    calls = []
    monkeypatch.setattr(plots, "save_overlay_grid", lambda *args, **kwargs: calls.append((args, kwargs)))
    results_report.dense_grid(run, tmp_path / "grid.png", "seed0")
    (rows, num_classes, _), kwargs = calls[0]
    maps, _ = load_dense_maps(evaluated["logdir"] / DENSE_MAPS_FILE)
    # the ID test row under the ID set's name, the OOD rows under theirs, the saved examples as they are
    assert [label for label, _ in rows] == ["CIFAR-10 test", "SynthNewObjects", "SynthClutter"]
    assert num_classes == 6 and "(seed 0)" in kwargs["title"]
    assert all(np.array_equal(a[1], b[1]) for (_, shown), (_, saved) in zip(rows, maps) for a, b in zip(shown, saved))

    with pytest.raises(FileNotFoundError, match=r"results_dfb_seed1/dense_maps.npz not found.*--no_grids"):
        results_report.dense_grid(run, tmp_path / "grid1.png", "seed1")
