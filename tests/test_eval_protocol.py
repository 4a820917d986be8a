"""eval.py's protocol for reportable numbers: the DFB fusions are chosen on held-out ID
TRAINING images (never on the scored ID test images or the OOD sets), those images stay out of
the fitted scores, and the extracted logits are fp32 by default.

A dfb checkpoint with random weights (no training needed) on the synthetic benchmark."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_cli
from datasets.folder import list_samples
import utils.base.distributed
import utils.base.runtime
import utils.evaluate.main
from tests.helpers import synthetic_world

# every test runs eval.py on a dfb network (pytest -m "not slow" leaves them out)
pytestmark = pytest.mark.slow

NUM_TRAIN = 72  # 6 classes x 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    sets, classes, checkpoint = synthetic_world(root)
    # the ID test set with every other image of each class left out
    half = root / "half_test"
    for path, _ in list_samples(sets["id_test"])[::2]:
        (half / Path(path).parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, half / Path(path).parent.name / Path(path).name)
    return dict(root=root, sets=sets, checkpoint=checkpoint, half_test=half)


def run_eval(world, logdir, checkpoint=None, id_test=None, ood=None, extra=()):
    sets = world["sets"]
    ood = ood or list(sets["ood"].values())
    return eval_cli.run(eval_cli.parse_args([
        "--model_path", str(checkpoint or world["checkpoint"]), "--id_train_path", str(sets["id_train"]),
        "--id_test_path", str(id_test or sets["id_test"]), "--ood_path", *map(str, ood), "--logdir", str(logdir),
        "--device", "cpu", "--workers", "0", "--knn_k", "5", "--dense_maps", "0", *extra]))


def train_relative_paths(world):
    root = Path(world["sets"]["id_train"])
    return [Path(path).relative_to(root).as_posix() for path, _ in list_samples(root)]


def test_fusion_choice_ignores_the_test_sets_and_records_its_images(world, tmp_path):
    ood = world["sets"]["ood"]
    first = run_eval(world, tmp_path / "a", ood=[ood["SynthNewObjects"], ood["SynthClutter"]])["selection"]
    # another OOD set and half of the ID test set: the choice must not move
    second = run_eval(world, tmp_path / "b", id_test=world["half_test"], ood=[ood["SynthNewBackgrounds"]])["selection"]
    assert first == second
    assert json.loads((tmp_path / "b" / "fusion_selection.json").read_text()) == json.loads(json.dumps(second))
    assert {key for key in first if key != "validation_images"} >= {"DFB-MSP[logit]", "DFB-KNN[prob]"}
    # no checkpoint holdout: min(--fusion_images 1000, 72 // 2) = 36 images of a permutation drawn with seed 0
    images = first["validation_images"]
    expected = sorted(np.random.default_rng(0).permutation(NUM_TRAIN)[:36])
    assert images["source"] == "seeded slice of --id_train_path" and images["count"] == 36
    assert images["images"] == [train_relative_paths(world)[i] for i in expected]
    assert images["fitted_images"] == NUM_TRAIN - 36 and images["seed"] == 0 and images["shuffle_grid"] == 4
    notes = (tmp_path / "a" / "results.md").read_text()
    assert ("DFB sign and T, and the direction of Background, chosen on 36 held-out ID training images "
            "(seeded slice of --id_train_path) against their 4x4 patch-shuffled copies") in notes


def test_held_out_images_never_enter_the_fitted_statistics(world, tmp_path, monkeypatch):
    fitted = []
    original = utils.evaluate.main.compute_all_scores

    def spy(id_train, test_sets, **kwargs):
        fitted.append(id_train)
        return original(id_train, test_sets, **kwargs)

    monkeypatch.setattr(utils.evaluate.main, "compute_all_scores", spy)
    result = run_eval(world, tmp_path, ood=[world["sets"]["ood"]["SynthClutter"]], extra=["--fusion_images", "20"])
    held_out = result["selection"]["validation_images"]["images"]
    assert len(held_out) == 20
    # the features of the whole training split, as extracted (the cache holds them, in dataset order)
    cache = next((tmp_path / "cache").glob("synthetic_train-*.npz"))
    with np.load(cache) as stored:
        all_features, all_labels = stored["features"], stored["labels"]
    keep = [i for i, path in enumerate(train_relative_paths(world)) if path not in set(held_out)]
    assert len(fitted) == 1 and len(keep) == NUM_TRAIN - 20
    np.testing.assert_array_equal(fitted[0].features, all_features[keep])
    np.testing.assert_array_equal(fitted[0].labels, all_labels[keep])


def test_checkpoint_holdout_is_used_when_enough_of_it_is_found(world, tmp_path):
    checkpoint = torch.load(world["checkpoint"], weights_only=False)
    paths = train_relative_paths(world)
    holdout = [paths[i] for i in (3, 10, 17, 30, 41, 50, 63, 70)]
    checkpoint["holdout_samples"] = holdout + ["no_such_class/0000.png"]  # absent paths are ignored
    with_holdout = tmp_path / "holdout.pth.tar"
    torch.save(checkpoint, with_holdout)
    ood = [world["sets"]["ood"]["SynthClutter"]]
    images = run_eval(world, tmp_path / "used", checkpoint=with_holdout, ood=ood,
                      extra=["--fusion_images", "8"])["selection"]["validation_images"]
    assert images["source"] == "checkpoint holdout_samples"
    assert images["images"] == holdout and images["fitted_images"] == NUM_TRAIN - 8
    # 8 found but 12 asked for (fewer than min(50, 12)): a seeded slice instead
    images = run_eval(world, tmp_path / "fallback", checkpoint=with_holdout, ood=ood,
                      extra=["--fusion_images", "12"])["selection"]["validation_images"]
    assert images["source"] == "seeded slice of --id_train_path" and images["count"] == 12
    assert images["images"] == [paths[i] for i in sorted(np.random.default_rng(0).permutation(NUM_TRAIN)[:12])]


def test_default_precision_is_fp32_even_where_bf16_is_the_device_default(world, tmp_path, monkeypatch):
    # pretend to be a GPU with bf16: eval must still extract in fp32 unless told otherwise
    monkeypatch.setattr(utils.base.runtime, "default_amp", lambda device: "bf16")
    monkeypatch.setattr(utils.base.distributed, "default_amp", lambda device: "bf16")
    ood = [world["sets"]["ood"]["SynthClutter"]]
    logits = {}
    for name, extra in (("default", []), ("fp32", ["--amp", "none"]), ("bf16", ["--amp", "bf16"])):
        run_eval(world, tmp_path / name, ood=ood, extra=extra)
        logits[name] = np.load(tmp_path / name / "logits" / "synthetic_test.npy")
    np.testing.assert_allclose(logits["default"], logits["fp32"], rtol=0, atol=1e-5)
    # CPU autocast emulates the bf16 path: it does move the logits, which is why it is not the default
    assert np.abs(logits["bf16"] - logits["fp32"]).max() > 1e-3
    assert "Logits and features in bf16" in (tmp_path / "bf16" / "results.md").read_text()


def test_a_validation_ood_folder_chooses_the_fusions_and_is_kept_apart_from_the_test_sets(world, tmp_path):
    ood = world["sets"]["ood"]
    validation, tested = ood["SynthNewBackgrounds"], [ood["SynthNewObjects"], ood["SynthClutter"]]
    result = run_eval(world, tmp_path / "val", ood=tested, extra=["--fusion_val_ood", str(validation)])
    selection = result["selection"]
    recorded = selection["validation_images"]["validation_ood"]
    assert recorded["source"] == "--fusion_val_ood" and recorded["path"] == str(validation)
    assert recorded["count"] == len(list_samples(validation))
    # never reported: no row, no score file of the validation folder
    assert {row["ood_dataset"] for row in result["rows"]} == {"SynthNewObjects", "SynthClutter"}
    assert not list((tmp_path / "val" / "scores").glob("*/SynthNewBackgrounds.npy"))
    # the recorded choices are those of the fusion rule on the held-out images vs that folder
    from utils.evaluate.sets import FUSION_ID, VALIDATION_OOD
    from utils.ood.fusion import select_background_sign, select_fusion
    cached = {name: next((tmp_path / "val" / "cache").glob(f"{name}-*.npz")) for name in (FUSION_ID, VALIDATION_OOD)}
    logits = {name: np.load(path)["logits"] for name, path in cached.items()}
    assert selection["Background"]["sign"] == select_background_sign(logits[FUSION_ID], logits[VALIDATION_OOD]).sign
    from utils.ood.scores import max_logit
    choice = select_fusion(max_logit(logits[FUSION_ID][:, :-1]), logits[FUSION_ID],
                           max_logit(logits[VALIDATION_OOD][:, :-1]), logits[VALIDATION_OOD], "logit")
    assert selection["DFB-MaxLogit[logit]"]["sign"] == choice.sign
    assert selection["DFB-MaxLogit[logit]"]["temperature"] == pytest.approx(choice.temperature)
    # Background follows the chosen direction; the fixed -z_bg stays as a labelled diagnostic
    test_logits = np.load(tmp_path / "val" / "logits" / "synthetic_test.npy")
    sign = selection["Background"]["sign"]
    np.testing.assert_allclose(np.load(tmp_path / "val" / "scores" / "Background" / "synthetic_test.npy"),
                               -sign * test_logits[:, -1], rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "val" / "scores" / "Background[-z_bg]" / "synthetic_test.npy"),
                               -test_logits[:, -1], rtol=1e-6)

    layout = json.loads((tmp_path / "val" / "dense_layout.json").read_text())
    assert set(layout) == {"synthetic_test", "SynthNewObjects", "SynthClutter"}
    assert layout["SynthClutter"]["images"] == len(list_samples(tested[1]))
    with pytest.raises(ValueError, match="also an --ood_path"):
        run_eval(world, tmp_path / "refused", ood=tested, extra=["--fusion_val_ood", str(tested[0])])
    copy = tmp_path / "copy_of_test_set"
    shutil.copytree(tested[1], copy)
    with pytest.raises(ValueError, match="shares .* byte-identical images with the test set SynthClutter"):
        run_eval(world, tmp_path / "refused", ood=tested, extra=["--fusion_val_ood", str(copy)])


def test_save_detector_best_takes_the_fusion_with_the_highest_validation_auroc(world, tmp_path):
    result = run_eval(world, tmp_path, ood=[world["sets"]["ood"]["SynthClutter"]], extra=["--save_detector", "best"])
    selection = result["selection"]
    fused = {key: value["validation_auroc"] for key, value in selection.items()
             if key.startswith("DFB-") and key.endswith("[logit]")}
    best = max(fused, key=fused.get)
    method = torch.load(tmp_path / "detector.pt", weights_only=False)["score"]["method"]
    assert fused[f"DFB-{method}[logit]"] == fused[best]
