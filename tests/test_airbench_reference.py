"""bench/airbench_reference.py: airbench94's schedule, optimiser constants, initialisation and network
against values worked out by hand from its hyperparameters, and the command end to end at tiny size."""
import json

import pytest
import torch

from bench import airbench_reference as ref
from datasets.synthetic import generate_benchmark


def test_schedule_rises_from_a_fifth_to_one_then_falls_to_seven_hundredths():
    total = 100  # warm-up: int(23.0) = 23 steps
    assert ref.lr_multiplier(0, total) == pytest.approx(0.2)
    assert ref.lr_multiplier(23, total) == pytest.approx(1.0)
    assert ref.lr_multiplier(10, total) == pytest.approx(0.2 + 0.8 * 10 / 23)
    assert ref.lr_multiplier(100, total) == pytest.approx(0.07)
    assert ref.lr_multiplier(60, total) == pytest.approx(1 - 0.93 * 37 / 77)


def test_optimizer_groups_carry_airbenchs_rates_and_decoupled_decay():
    model = ref.AirbenchNet()
    biases, others = ref.optimizer_groups(model)
    kilostep = 1024 * (1 + 1 / 0.15)  # 7850.67
    assert others["lr"] == pytest.approx(11.5 / kilostep)
    assert biases["lr"] == pytest.approx(64 * 11.5 / kilostep)
    for group in (biases, others):  # lr x weight decay is the same decoupled decay in both groups
        assert group["lr"] * group["weight_decay"] == pytest.approx(0.0153 * 1024 / kilostep)
    assert len(biases["params"]) == 6  # the six BatchNorms' biases; their scales are fixed
    names = {id(p): name for name, p in model.named_parameters()}
    assert {names[id(p)] for p in others["params"]} == {"whiten.bias", "head.weight"} | {
        f"groups.{g}.conv{c}.weight" for g in range(3) for c in (1, 2)}


def test_network_shapes_identity_convs_and_airbench_inputs():
    torch.manual_seed(0)
    model = ref.AirbenchNet().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    logits, features = model.forward_with_features(x)
    assert logits.shape == (2, 10) and features.shape == (2, 256)
    torch.testing.assert_close(logits, model.head(features) / 9)
    group = model.groups[1]
    h = torch.randn(2, 256, 7, 7)
    torch.testing.assert_close(group.conv2(h), h)  # Dirac: the identity at initialisation
    h = torch.randn(2, 64, 7, 7)
    torch.testing.assert_close(group.conv1(h)[:, :64], h)  # the first 64 of 256 filters pass the input on
    pixels = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in (ref.CIFAR10_MEAN, ref.CIFAR10_STD))
    expected = (pixels - mean) / std
    torch.testing.assert_close(model.airbench_inputs(pixels * 2 - 1), expected)
    assert not model.whiten.weight.requires_grad and not group.norm1.weight.requires_grad


def test_the_command_trains_and_reports_the_held_out_top1(tmp_path, capsys):
    sets = generate_benchmark(tmp_path / "data", seed=5, size=32, n_train_per_class=8, n_test_per_class=1, n_ood=1,
                              progress=False)
    ref.main(["--datadir", str(sets["id_train"]), "--out", str(tmp_path / "out"), "--holdout", "0.25",
              "--epochs", "2", "--batch", "8"])
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["train_images"] == 36 and result["held_out_images"] == 12
    assert result["steps"] == 8  # 36 // 8 = 4 batches per epoch, 2 epochs
    for tta in ("none", "flip", "flip_translate"):
        assert 0 <= result[f"val_top1_{tta}"] <= 1
    assert "| airbench94 reference (bf16) | 8 x 8 |" in capsys.readouterr().out
    ref.main(["--datadir", str(sets["id_train"]), "--out", str(tmp_path / "fp32"), "--holdout", "0.25",
              "--epochs", "1", "--batch", "8", "--amp", "none"])
    assert json.loads((tmp_path / "fp32" / "result.json").read_text())["amp"] == "none"


def test_testdir_trains_on_every_image_and_reports_test_top1(tmp_path, capsys):
    sets = generate_benchmark(tmp_path / "data", seed=5, size=32, n_train_per_class=8, n_test_per_class=2, n_ood=1,
                              progress=False)
    ref.main(["--datadir", str(sets["id_train"]), "--testdir", str(sets["id_test"]), "--out", str(tmp_path / "out"),
              "--holdout", "0", "--epochs", "1", "--batch", "8"])
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["evaluated_on"] == "test" and result["train_images"] == 48 and result["held_out_images"] == 0
    assert result["evaluated_images"] == 12 and "val_top1_flip" not in result
    assert all(0 <= result[f"test_top1_{tta}"] <= 1 for tta in ("none", "flip", "flip_translate"))
    assert "| test top-1 % |" in capsys.readouterr().out


def test_nothing_to_evaluate_or_other_classes_are_refused(tmp_path, capsys):
    sets = generate_benchmark(tmp_path / "data", seed=5, size=32, n_train_per_class=2, n_test_per_class=1, n_ood=1,
                              progress=False)
    with pytest.raises(SystemExit):
        ref.main(["--datadir", str(sets["id_train"]), "--out", str(tmp_path / "out"), "--holdout", "0"])
    assert "--holdout 0 leaves nothing to evaluate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ref.main(["--datadir", str(sets["id_train"]), "--testdir", str(sets["ood"]["SynthNewObjects"]), "--out", str(tmp_path / "o")])
    assert "other classes than --datadir" in capsys.readouterr().err
