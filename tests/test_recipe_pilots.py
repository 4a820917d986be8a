"""bench/recipe_pilots.py: the training-compute budget against a count written out by hand from the
network's widths, flip test-time augmentation (utils.evaluate.engine.FlipAveraged, which the
pilots use) against two explicit forwards, and airbench's multi-crop TTA (FlipTranslateAveraged)
against six forwards of crops cut by hand."""
import pytest
import torch

from bench.recipe_pilots import steps_for_budget, training_pflop
from models.resnetv2 import create_model
from utils.evaluate.engine import FlipAveraged, FlipTranslateAveraged, with_tta


def hand_count_c32_s_forward(head_size):
    """2 x multiply-adds of ResNetV2-C32-S at 32 px, layer by layer: 3x3 stem 3->32 at 32x32; per
    stage (64, 128, 256 wide at 16, 8, 4 px) a 3x3 stride-2 conv, a 3x3 conv and a 1x1 stride-2
    projection; the head's 1x1 conv on the pooled 256-vector."""
    macs = 32 * 32 * 32 * 3 * 9
    cin = 32
    for cout, side in ((64, 16), (128, 8), (256, 4)):
        macs += side * side * cout * (cin * 9 + cout * 9 + cin)
        cin = cout
    return 2 * (macs + 256 * head_size)


def test_budget_in_steps_follows_the_hand_count():
    forward = hand_count_c32_s_forward(10)
    assert training_pflop("ResNetV2-C32-S", 32, 1000) == pytest.approx(3 * forward * 1000 / 1e15)
    per_step = 3 * forward * 256
    steps = steps_for_budget("ResNetV2-C32-S", 32, 256, 0.1)
    assert steps * per_step <= 0.1e15 < (steps + 1) * per_step


def test_flip_averaged_outputs_are_the_mean_of_two_forwards():
    torch.manual_seed(0)
    model = create_model("ResNetV2-C32-S", head_size=5, zero_head=False).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, features = FlipAveraged(model).forward_with_features(images)
        plain, mirrored = model.forward_with_features(images), model.forward_with_features(torch.flip(images, [3]))
    torch.testing.assert_close(logits, (plain[0] + mirrored[0]) / 2)
    torch.testing.assert_close(features, (plain[1] + mirrored[1]) / 2)
    weight, bias = model.head_parameters()  # the head is affine: the averaged pair stays consistent
    torch.testing.assert_close(features @ weight.T + bias, logits, rtol=0, atol=1e-5)
    assert not torch.allclose(plain[0], mirrored[0])  # the mirror is not a no-op on this network


def test_multi_crop_averages_six_forwards_of_hand_cut_crops():
    torch.manual_seed(0)
    model = create_model("ResNetV2-C32-S", head_size=5, zero_head=False).eval()
    images = torch.randn(2, 3, 32, 32)
    # reflection padding by 1 written out: row / column -1 is row / column 1, 32 is 30
    rows = [1, *range(32), 30]
    padded = images[:, :, rows][:, :, :, rows]
    views = (images, padded[:, :, 0:32, 0:32], padded[:, :, 2:34, 2:34])
    weights = (0.5, 0.25, 0.25)
    with torch.no_grad():
        logits, features = FlipTranslateAveraged(model).forward_with_features(images)
        expected = [sum(w * (model.forward_with_features(v)[k] + model.forward_with_features(v.flip(3))[k]) / 2
                        for w, v in zip(weights, views)) for k in (0, 1)]
    torch.testing.assert_close(logits, expected[0])
    torch.testing.assert_close(features, expected[1])
    weight, bias = model.head_parameters()
    torch.testing.assert_close(features @ weight.T + bias, logits, rtol=0, atol=1e-5)
    assert isinstance(with_tta(model, "flip_translate"), FlipTranslateAveraged)
    assert with_tta(model, "none") is model
    with pytest.raises(ValueError, match="flip_translate"):
        with_tta(model, "crops")


def test_flip_averaged_extracts_as_the_model_does(tmp_path):
    """utils.evaluate.engine.extract reads head_size and feature_dim off the network it is given; its
    flip-averaged logits are those of the two forwards on the images extract prepares."""
    import numpy as np
    from PIL import Image

    from datasets.sources import open_split
    from utils.evaluate.engine import extract

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    torch.manual_seed(0)
    model = create_model("ResNetV2-C32-S", head_size=2, zero_head=False).eval()
    dataset = open_split(tmp_path, 32)
    args = (dataset, 32, torch.device("cpu"), 4)
    plain = extract(model, *args, workers=0)
    averaged = extract(FlipAveraged(model), *args, workers=0)
    assert averaged["logits"].shape == plain["logits"].shape == (6, 2)
    assert averaged["features"].shape == (6, model.feature_dim)
    assert not np.allclose(averaged["logits"], plain["logits"])
    np.testing.assert_array_equal(averaged["labels"], plain["labels"])


def test_speed_table_lists_each_candidate(capsys):
    from bench import recipe_pilots
    recipe_pilots.main(["speed", "--models", "ResNetV2-C32-S@32", "--batch", "4"])
    printed = capsys.readouterr().out
    gflop = hand_count_c32_s_forward(10) / 1e9
    assert f"| ResNetV2-C32-S @ 32 | {gflop:.3f} | 1.21 M | 256x4x4 |" in printed


def test_table_and_test_commands_report_top1_on_the_held_out_and_the_test_images(tmp_path, capsys):
    """Both commands against a forward written out here: the images' pixels scaled to [-1, 1] (32 px
    images need no resize), the network's argmax, the mirror's logits averaged in, and airbench's 1 px
    translations of the reflection-padded image averaged with those."""
    import numpy as np
    from PIL import Image

    import train
    from bench import recipe_pilots
    from datasets.synthetic import generate_benchmark
    from models.loading import load_network

    sets = generate_benchmark(tmp_path / "data", seed=3, size=32, n_train_per_class=8, n_test_per_class=4, n_ood=2,
                              progress=False)
    train.run(train.parse_args(["--task", "cls", "--datadir", str(sets["id_train"]), "--logdir", str(tmp_path / "runs"),
                                "--name", "p", "--steps", "8", "--model", "ResNetV2-C32-S", "--resolution", "32",
                                "--pretrained", "none", "--device", "cpu", "--workers", "0", "--batch", "8",
                                "--eval_every", "0", "--holdout", "0.25"]))
    model, checkpoint, _, _ = load_network(tmp_path / "runs" / "p" / "checkpoint.pth.tar", expect_task="cls")
    model.eval()

    def expected(root, paths):
        images = torch.stack([torch.from_numpy(np.array(Image.open(root / path).convert("RGB"))).permute(2, 0, 1)
                              for path in paths]).float() / 127.5 - 1
        labels = torch.tensor([checkpoint["classes"].index(path.split("/")[0]) for path in paths])
        padded = torch.nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            def flip_mean(views):
                return (model(views).float() + model(views.flip(-1)).float()) / 2
            plain, flipped = model(images).float(), flip_mean(images)
            shifted = (flip_mean(padded[..., :32, :32]) + flip_mean(padded[..., 2:, 2:])) / 2
        return [100 * (logits.argmax(1) == labels).float().mean().item()
                for logits in (plain, flipped, (flipped + shifted) / 2)]

    def printed_row():
        row = capsys.readouterr().out.strip().splitlines()[-1].split(" | ")
        return [float(row[4]), float(row[5]), float(row[6].strip(" |"))]

    recipe_pilots.main(["table", "--runs", str(tmp_path / "runs"), "--datadir", str(sets["id_train"]), "p"])
    assert printed_row() == pytest.approx(expected(sets["id_train"], checkpoint["holdout_samples"]), abs=0.01)
    test_paths = sorted(path.relative_to(sets["id_test"]).as_posix() for path in sets["id_test"].glob("*/*.png"))
    recipe_pilots.main(["test", "--runs", str(tmp_path / "runs"), "--datadir", str(sets["id_test"]), "p"])
    assert printed_row() == pytest.approx(expected(sets["id_test"], test_paths), abs=0.01)
