"""The fast recipe's pieces of issue 36: the weight EMA (`--ema_decay`), airbench's lookahead
(`--lookahead`), per-epoch alternating flips (`--flip alternate`), translation by reflection padding
(`--train_pad`) and the patch-whitening stem (`-Whiten` models), against small computations done by hand."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import train
from datasets.batch_augment import alternating_flips, first_epoch_flips, reflect_pad, train_augment
from datasets.sources import GlobalBatchIndices, InMemoryBatches
from datasets.synthetic import generate_benchmark
from datasets.folder import decode_all
from datasets.sources import open_split
from datasets.transforms import normalize
from models.resnetv2 import create_model, patch_whitening_filters
from utils.train.weight_average import Lookahead, WeightAverage, decay_at

TINY = ["--model", "ResNetV2-C32-S-BN", "--resolution", "32", "--pretrained", "none", "--device", "cpu",
        "--workers", "0", "--batch", "8", "--eval_every", "0", "--save_every", "100", "--holdout", "0.25"]


def tiny_network():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_decay_warms_up_to_its_value():
    assert decay_at(0.99, 1) == pytest.approx(2 / 11)
    assert decay_at(0.99, 8) == pytest.approx(9 / 18)
    assert decay_at(0.99, 10_000) == 0.99


def test_weight_average_follows_the_recurrence_computed_by_hand():
    network = tiny_network()
    average = WeightAverage(network, 0.9)
    expected = {key: value.double() if value.is_floating_point() else value.clone()
                for key, value in network.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    for update in range(1, 31):
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator))
        network.train()(torch.randn(5, 3, generator=generator))  # moves the running statistics too
        average.update()
        decay = min(0.9, (1 + update) / (10 + update))
        for key, value in network.state_dict().items():
            if value.is_floating_point():
                expected[key] = decay * expected[key] + (1 - decay) * value.double()
            else:
                expected[key] = value.clone()
    for key, value in average.average.items():
        torch.testing.assert_close(value.to(expected[key].dtype), expected[key], rtol=1e-5, atol=1e-6)
    assert average.average["1.num_batches_tracked"] == 30  # an integer buffer is copied, not averaged

    restored = WeightAverage(tiny_network(), 0.9, state=average.state_dict())
    assert restored.updates == 30
    for key, value in average.average.items():
        assert torch.equal(restored.average[key], value)
    restored.copy_to_model()
    for key, value in restored.model.state_dict().items():
        assert torch.equal(value, average.average[key])
    with pytest.raises(ValueError, match="0, 1"):
        WeightAverage(network, 1.0)


def test_lookahead_follows_airbenchs_rule_computed_by_hand():
    network, total = tiny_network(), 23
    lookahead = Lookahead(network, total)
    slow = {key: value.double() for key, value in network.state_dict().items() if value.is_floating_point()}
    fast = dict(slow)
    generator = torch.Generator().manual_seed(2)
    for step in range(1, total + 1):
        with torch.no_grad():  # an "optimizer step" on the network and on the hand-kept copy alike
            for name, parameter in network.named_parameters():
                change = torch.randn(parameter.shape, generator=generator)
                parameter.add_(change)
                fast[name] = fast[name] + change.double()
        lookahead.update()
        if step % 5 == 0:
            decay = 0.95 ** 5 * (step / total) ** 3
            for key in slow:
                slow[key] = decay * slow[key] + (1 - decay) * fast[key]
                fast[key] = slow[key]
        for key, value in network.state_dict().items():
            if value.is_floating_point():
                torch.testing.assert_close(value.double(), fast[key], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(network[0].weight.double(), slow["0.weight"])  # steps 21-23 moved it on
    lookahead.copy_to_model()  # the end of the run: the slow weights
    for key, value in network.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value.double(), slow[key], rtol=1e-5, atol=1e-5)
    restored = Lookahead(tiny_network(), total, state=lookahead.state_dict())
    assert restored.updates == total
    with pytest.raises(ValueError, match="at least one step"):
        Lookahead(network, 0)


def test_whitening_filters_whiten_the_patches_they_come_from():
    generator = torch.Generator().manual_seed(3)
    # correlated colour channels and smooth images: far from white
    images = F.avg_pool2d(torch.randn(6, 3, 14, 14, generator=generator), 3, stride=1)
    images = torch.einsum("nchw,dc->ndhw", images, torch.tensor([[1.0, 0.5, 0.2], [0.0, 1.0, 0.7], [0.0, 0.0, 0.3]]))
    filters = patch_whitening_filters(images, kernel_size=3, eps=1e-3)
    assert filters.shape == (54, 3, 3, 3)
    torch.testing.assert_close(filters[27:], -filters[:27])
    # independently: every 3x3 patch in numpy, in the conv kernel's (channel, row, column) order
    array = images.double().numpy()
    patches = np.stack([array[n, :, i:i + 3, j:j + 3].reshape(-1) for n in range(6)
                        for i in range(10) for j in range(10)])
    eigenvalues = np.sort(np.linalg.eigvalsh(patches.T @ patches / len(patches)))[::-1]
    responses = F.conv2d(images.double(), filters[:27].double()).permute(0, 2, 3, 1).reshape(-1, 27).numpy()
    np.testing.assert_allclose(responses.T @ responses / len(responses), np.diag(eigenvalues / (eigenvalues + 1e-3)),
                               atol=1e-4)


def test_alternating_flips_show_every_image_both_ways_every_two_epochs():
    first = first_epoch_flips(10_000, seed=3)
    assert 4_800 < int(first.sum()) < 5_200  # p = 0.5: 3.8 standard deviations either side
    assert torch.equal(first, first_epoch_flips(10_000, seed=3))
    assert not torch.equal(first, first_epoch_flips(10_000, seed=4))
    items = torch.randperm(10_000)[:257]
    for epoch in range(4):
        now, following = (alternating_flips(first, items, e) for e in (epoch, epoch + 1))
        assert torch.equal(now, ~following)
        assert torch.equal(now, first[items] if epoch % 2 == 0 else ~first[items])


def mirrored_or_not(batch_images, originals):
    """Per image of a batch: True if it is its original mirrored, False if unchanged."""
    plain = (batch_images - originals).abs().amax(dim=(1, 2, 3)) < 1e-6
    mirrored = (batch_images - originals.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert torch.all(plain ^ mirrored)
    return mirrored


def test_in_memory_batches_mirror_the_images_the_alternation_names():
    torch.manual_seed(0)
    count, batch = 24, 8
    # no crop left (train size = resolution), images that differ from their mirror: only the flip acts
    images = torch.randint(0, 256, (count, 3, 8, 8), dtype=torch.uint8)
    decoded = {"images": images, "labels": torch.arange(count)}
    indices = GlobalBatchIndices(count, batch, seed=5)
    source = InMemoryBatches(decoded, indices, 8, torch.device("cpu"), seed=5, train_size=8, flip="alternate")
    first = first_epoch_flips(count, seed=5)
    seen, batches = {}, []
    for step, ((pixels, labels, _), items) in enumerate(zip(source, GlobalBatchIndices(count, batch, seed=5))):
        if step == 9:  # three epochs of three batches
            break
        originals = (images[labels].float() / 255 - 0.5) / 0.5
        batches.append(pixels)
        flips = mirrored_or_not(pixels, originals)
        assert torch.equal(flips, alternating_flips(first, items, step // 3))
        for label, flipped in zip(labels.tolist(), flips.tolist()):
            seen.setdefault(label, []).append(flipped)
    assert all(ways in ([True, False, True], [False, True, False]) for ways in seen.values())

    resumed = InMemoryBatches(decoded, GlobalBatchIndices(count, batch, seed=5, start_step=4), 8,
                              torch.device("cpu"), seed=5, train_size=8, flip="alternate")
    assert torch.equal(next(iter(resumed))[0], batches[4])  # a run resumed mid-epoch mirrors the same images
    with pytest.raises(ValueError, match="flip 'sometimes'"):
        InMemoryBatches(decoded, indices, 8, torch.device("cpu"), flip="sometimes")


def test_reflect_pad_is_torchs_reflection_for_images_and_masks():
    images = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8)
    expected = F.pad(images.float(), (4, 4, 4, 4), mode="reflect")
    assert torch.equal(reflect_pad(images.float(), 4), expected)
    assert torch.equal(reflect_pad(images[:, 0], 4), expected[:, 0].to(torch.uint8))
    with pytest.raises(ValueError, match="larger than 6 px"):
        reflect_pad(images, 6)


def test_padded_crops_translate_without_zoom_and_keep_masks_aligned():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    masks = images[:, 0].clone()  # a mask that is the image's first channel: aligned iff equal after augmenting
    tops, lefts = torch.tensor([2, 0, 4, 1]), torch.tensor([2, 4, 0, 3])
    flips = torch.tensor([False, False, True, True])
    pixels, out_masks = train_augment(images, masks, 8, train_size=12, crops=(tops, lefts, flips), pad=True)
    as_uint8 = torch.round((pixels * 0.5 + 0.5) * 255).to(torch.uint8)
    assert torch.equal(as_uint8[:, 0], out_masks)
    assert torch.equal(as_uint8[0], images[0])  # offset 2 = the padding: the image itself
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for i in range(4):
        crop = padded[i, :, tops[i]:tops[i] + 8, lefts[i]:lefts[i] + 8]
        assert torch.equal(as_uint8[i], crop.flip(-1) if flips[i] else crop)
    with pytest.raises(ValueError, match="even difference"):
        train_augment(images, None, 8, train_size=11, crops=(tops, lefts, flips), pad=True)
    with pytest.raises(ValueError, match="no scale_range"):  # pad and a random scale are two different crops
        train_augment(images, None, 8, train_size=12, pad=True, scale_range=(0.5, 1.0))


def test_in_memory_batches_crop_from_the_padded_image():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    source = InMemoryBatches({"images": images, "labels": torch.arange(16)}, GlobalBatchIndices(16, 8), 8,
                             torch.device("cpu"), train_size=12, pad=True)
    pixels, labels, _ = next(iter(source))
    as_uint8 = torch.round((pixels * 0.5 + 0.5) * 255).to(torch.uint8)
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for image, label in zip(as_uint8, labels):
        crops = [padded[label, :, top:top + 8, left:left + 8] for top in range(5) for left in range(5)]
        assert any(torch.equal(image, crop) or torch.equal(image, crop.flip(-1)) for crop in crops)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    return generate_benchmark(root / "data", seed=4, size=32, n_train_per_class=8, n_test_per_class=2, n_ood=4,
                              progress=False)["id_train"]


def cls_run(train_dir, logdir, name, *extra):
    return train.parse_args(["--task", "cls", "--datadir", str(train_dir), "--logdir", str(logdir), "--name", name,
                             "--steps", "12", *TINY, *extra])


def test_training_keeps_the_weight_average_and_resumes_it(train_dir, tmp_path):
    train.run(cls_run(train_dir, tmp_path, "last"))
    metrics = train.run(cls_run(train_dir, tmp_path, "ema", "--ema_decay", "0.8"))
    last = torch.load(tmp_path / "last" / "checkpoint.pth.tar", weights_only=False)
    ema = torch.load(tmp_path / "ema" / "checkpoint.pth.tar", weights_only=False)
    assert "ema" not in last and ema["ema"]["updates"] == 12
    for key, value in ema["model"].items():  # the finished checkpoint holds the average ...
        assert torch.equal(value, ema["ema"]["average"][key])
    # ... not the last weights, which the same run without the average ends with
    assert any(not torch.equal(value, last["model"][key]) for key, value in ema["model"].items()
               if value.is_floating_point())
    assert 0 <= metrics["val_top1"] <= 1

    train.run(cls_run(train_dir, tmp_path, "resumed", "--ema_decay", "0.8", "--stop_after", "5"))
    half = torch.load(tmp_path / "resumed" / "checkpoint.pth.tar", weights_only=False)
    assert half["step"] == 5 and half["ema"]["updates"] == 5
    train.run(cls_run(train_dir, tmp_path, "resumed", "--ema_decay", "0.8"))
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pth.tar", weights_only=False)
    for key, value in ema["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="--ema_decay 0.8"):  # another decay is another run
        train.run(cls_run(train_dir, tmp_path, "resumed", "--ema_decay", "0.5"))


def test_alternating_flips_train_and_need_the_data_in_memory(train_dir, tmp_path, capsys):
    train.run(cls_run(train_dir, tmp_path, "alternate", "--flip", "alternate"))
    assert "alternate flips" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--flip alternate needs the training images in memory"):
        train.run(cls_run(train_dir, tmp_path, "loader", "--flip", "alternate", "--data_on_device", "never"))
    with pytest.raises(SystemExit):
        train.parse_args(["--task", "cls", "--datadir", "x", "--name", "n", "--ema_decay", "1"])


def test_padded_translation_trains_and_replaces_the_resize(train_dir, tmp_path, capsys):
    train.run(cls_run(train_dir, tmp_path, "pad", "--train_pad", "2"))
    assert "reflection-pad 36 -> crop 32" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--train_pad 2 needs the training images in memory"):
        train.run(cls_run(train_dir, tmp_path, "loader", "--train_pad", "2", "--data_on_device", "never"))
    for conflict in (["--train_resize", "36"], ["--scale_range", "0.5", "1"]):
        with pytest.raises(SystemExit):
            train.parse_args(["--task", "cls", "--datadir", "x", "--name", "n", "--train_pad", "2", *conflict])


def test_lookahead_trains_resumes_and_ends_with_the_slow_weights(train_dir, tmp_path, capsys):
    train.run(cls_run(train_dir, tmp_path, "look", "--lookahead"))
    assert "lookahead (airbench's)" in capsys.readouterr().out
    whole = torch.load(tmp_path / "look" / "checkpoint.pth.tar", weights_only=False)
    assert whole["ema"]["updates"] == 12
    for key, value in whole["model"].items():
        assert torch.equal(value, whole["ema"]["average"][key])
    train.run(cls_run(train_dir, tmp_path, "resumed", "--lookahead", "--stop_after", "7"))
    train.run(cls_run(train_dir, tmp_path, "resumed", "--lookahead"))
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pth.tar", weights_only=False)
    for key, value in whole["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-4, atol=1e-5)
    with pytest.raises(SystemExit):
        train.parse_args(["--task", "cls", "--datadir", "x", "--name", "n", "--lookahead", "--ema_decay", "0.9"])


def test_a_whitening_stem_is_set_from_the_training_images_and_stays_frozen(train_dir, tmp_path, capsys):
    run = cls_run(train_dir, tmp_path, "white", "--holdout", "0")
    run.model = "ResNetV2-C32-S-BN-Whiten"
    train.run(run)
    assert "whitening filters of the 3x3 patches of 48 training images" in capsys.readouterr().out
    stem = torch.load(tmp_path / "white" / "checkpoint.pth.tar", weights_only=False)["model"]["root.conv.weight"]
    images = normalize(decode_all(open_split(str(train_dir), 32), progress=False)["images"])
    torch.testing.assert_close(stem, patch_whitening_filters(images))  # trained 12 steps, unchanged
    model = create_model("ResNetV2-C32-S-BN-Whiten", head_size=10)
    assert model.root_is_whitening() and not model.root.conv.weight.requires_grad
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert model.feature_map(x).shape == (2, 256, 4, 4)
        torch.testing.assert_close(model.dense_logits(x).mean(dim=(2, 3)), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no BiT .npz form"):
        model.npz_arrays()
    assert not create_model("ResNetV2-C32-S-BN", head_size=10).root_is_whitening()


@pytest.mark.parametrize("name", ["ResNetV2-C32-S-BN", "ResNetV2-C32P-W-BN"])
def test_whiten_relu_feeds_the_stem_into_the_first_relu_without_a_norm(name):
    torch.manual_seed(0)
    normed = create_model(f"{name}-Whiten", head_size=10, zero_head=False)
    raw = create_model(f"{name}-WhitenReLU", head_size=10, zero_head=False)
    assert set(normed.state_dict()) - set(raw.state_dict()) == {
        f"body.block1.unit01.gn1.{key}" for key in ("weight", "bias", "running_mean", "running_var",
                                                     "num_batches_tracked")}
    assert set(raw.state_dict()) < set(normed.state_dict())
    raw.load_state_dict({key: value for key, value in normed.state_dict().items() if key in raw.state_dict()})
    unit, x = raw.body.block1.unit01, torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = raw.root(x)
        first_conv = unit.conv1(F.relu(stem))  # by hand: no norm between the stem and the ReLU
        torch.testing.assert_close(unit.conv1(F.relu(unit.gn1(stem))), first_conv)
        assert raw.eval().feature_map(x).shape == normed.eval().feature_map(x).shape
        assert not torch.allclose(raw.feature_map(x), normed.feature_map(x))  # the norm did something
