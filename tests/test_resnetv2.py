"""Tests of models/resnetv2.py against independent computations (hand-written BiT npz
names, a functional forward from raw npz arrays, hand-counted parameters)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.resnetv2 import (KNOWN_MODELS, MaxPool3x3Stride2, ResNetV2, StdConv2d, create_model,
                             load_state_dict_checked, npz_key_map)

TINY = "ResNetV2-Tiny"
R50 = "BiT-M-R50x1"


# -- independent description of the BiT npz format ----------------------------------------
def bit_npz_table(block_units, width_factor, head_size):
    """[(torch name, npz key, npz shape)] written from the BiT naming convention:
    convs HWIO, a/b/c = first/second/third conv of a unit, a/proj = projection."""
    root = int(64 * width_factor)
    rows = [("root.conv.weight", "resnet/root_block/standardized_conv2d/kernel", (7, 7, 3, root))]
    cin = root
    for b, units in enumerate(block_units, start=1):
        cout = int(256 * width_factor) * 2 ** (b - 1)
        cmid = cout // 4
        for u in range(1, units + 1):
            t, k = f"body.block{b}.unit{u:02d}.", f"resnet/block{b}/unit{u:02d}/"
            rows += [
                (t + "gn1.weight", k + "a/group_norm/gamma", (cin,)),
                (t + "gn1.bias", k + "a/group_norm/beta", (cin,)),
                (t + "conv1.weight", k + "a/standardized_conv2d/kernel", (1, 1, cin, cmid)),
                (t + "gn2.weight", k + "b/group_norm/gamma", (cmid,)),
                (t + "gn2.bias", k + "b/group_norm/beta", (cmid,)),
                (t + "conv2.weight", k + "b/standardized_conv2d/kernel", (3, 3, cmid, cmid)),
                (t + "gn3.weight", k + "c/group_norm/gamma", (cmid,)),
                (t + "gn3.bias", k + "c/group_norm/beta", (cmid,)),
                (t + "conv3.weight", k + "c/standardized_conv2d/kernel", (1, 1, cmid, cout)),
            ]
            if u == 1:  # first unit of every block changes width or stride
                rows.append((t + "downsample.weight", k + "a/proj/standardized_conv2d/kernel",
                             (1, 1, cin, cout)))
            cin = cout
    rows += [
        ("head.gn.weight", "resnet/group_norm/gamma", (cin,)),
        ("head.gn.bias", "resnet/group_norm/beta", (cin,)),
        ("head.conv.weight", "resnet/head/conv2d/kernel", (1, 1, cin, head_size)),
        ("head.conv.bias", "resnet/head/conv2d/bias", (head_size,)),
    ]
    return rows


def fake_npz_arrays(rows, seed=0):
    """Random float32 arrays; GN vectors near 1 / 0 keep activations tame. The head GN
    gamma is stored as [1, 1, 1, D], as some BiT files do."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for _, key, shape in rows:
        values = rng.standard_normal(shape).astype(np.float32)
        if key.endswith("gamma"):
            values = 1.0 + 0.2 * values
        elif key.endswith("beta") or key.endswith("bias"):
            values = 0.2 * values
        arrays[key] = values
    arrays["resnet/group_norm/gamma"] = arrays["resnet/group_norm/gamma"].reshape(1, 1, 1, -1)
    return arrays


def torch_layout(key, array):
    """Kernels HWIO -> OIHW; every other array flattened to 1-D."""
    tensor = torch.from_numpy(np.asarray(array))
    return tensor.permute(3, 2, 0, 1) if key.endswith("kernel") else tensor.reshape(-1)


def standardized(kernel_hwio):
    w = torch_layout("kernel", kernel_hwio).double()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = ((w - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    return (w - mean) / torch.sqrt(var + 1e-10)


def functional_bit_forward(arrays, block_units, x, last_block_stride=2):
    """The whole BiT ResNetV2 in float64 from raw npz arrays; returns (logits, pooled)."""
    def gn(h, prefix):
        return F.group_norm(h, 32, torch_layout("gamma", arrays[prefix + "gamma"]).double(),
                            torch_layout("beta", arrays[prefix + "beta"]).double(), eps=1e-5)

    def conv(h, key, stride=1, padding=0):
        return F.conv2d(h, standardized(arrays[key]), stride=stride, padding=padding)

    h = conv(x, "resnet/root_block/standardized_conv2d/kernel", stride=2, padding=3)
    h = F.max_pool2d(F.pad(h, (1, 1, 1, 1), value=0.0), kernel_size=3, stride=2)
    for b, units in enumerate(block_units, start=1):
        for u in range(1, units + 1):
            k = f"resnet/block{b}/unit{u:02d}/"
            stride = (last_block_stride if b == 4 else 2) if (b > 1 and u == 1) else 1
            a = F.relu(gn(h, k + "a/group_norm/"))
            residual = conv(a, k + "a/proj/standardized_conv2d/kernel", stride) if u == 1 else h
            out = conv(a, k + "a/standardized_conv2d/kernel")
            out = conv(F.relu(gn(out, k + "b/group_norm/")), k + "b/standardized_conv2d/kernel",
                       stride, padding=1)
            out = conv(F.relu(gn(out, k + "c/group_norm/")), k + "c/standardized_conv2d/kernel")
            h = out + residual
    pooled = F.relu(gn(h, "resnet/group_norm/")).mean(dim=(2, 3))
    kernel = torch.from_numpy(arrays["resnet/head/conv2d/kernel"]).double()  # [1, 1, D, C]
    logits = pooled @ kernel[0, 0] + torch.from_numpy(arrays["resnet/head/conv2d/bias"]).double()
    return logits, pooled


def config_units(name):
    return KNOWN_MODELS[name].block_units, KNOWN_MODELS[name].width_factor


# -- 1. npz mapping ------------------------------------------------------------------------
@pytest.mark.parametrize("name", [TINY, R50])
def test_npz_loading_maps_and_transposes_every_parameter(tmp_path, name):
    units, wf = config_units(name)
    rows = bit_npz_table(units, wf, head_size=5)
    arrays = fake_npz_arrays(rows)
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)

    model = create_model(name, head_size=5)
    assert npz_key_map(model) == {t: k for t, k, _ in rows}
    model.load_from_npz(path)

    state = model.state_dict()
    assert set(state) == {t for t, _, _ in rows}
    for torch_name, key, _ in rows:
        expected = torch_layout(key, arrays[key])
        assert torch.equal(state[torch_name], expected), f"{torch_name} <- {key}"


@pytest.mark.parametrize("name", [TINY, R50])
def test_npz_model_matches_functional_forward(tmp_path, name):
    units, wf = config_units(name)
    arrays = fake_npz_arrays(bit_npz_table(units, wf, head_size=4), seed=1)
    model = create_model(name, head_size=4)
    model.load_from_npz(arrays)
    model.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, pooled = model.forward_with_features(x)
    ref_logits, ref_pooled = functional_bit_forward(arrays, units, x, KNOWN_MODELS[name].last_block_stride)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-9, atol=1e-9)


# -- 2. head handling and npz errors -------------------------------------------------------
def test_load_head_false_keeps_zero_head_and_loads_head_gn():
    units, wf = config_units(TINY)
    arrays = fake_npz_arrays(bit_npz_table(units, wf, head_size=7))  # upstream head: 7 classes
    model = create_model(TINY, head_size=3)
    model.load_from_npz(arrays, load_head=False)
    assert model.head_size == 3
    assert torch.count_nonzero(model.head.conv.weight) == 0
    assert torch.count_nonzero(model.head.conv.bias) == 0
    head_gamma = torch_layout("gamma", arrays["resnet/group_norm/gamma"])
    assert torch.equal(model.head.gn.weight, head_gamma)

    with pytest.raises(ValueError, match="resnet/head/conv2d/kernel"):
        model.load_from_npz(arrays, load_head=True)


def test_ilsvrc2012_npz_with_its_1000_class_head_loads_without_the_head(tmp_path):
    """BiT-M-R50x1-ILSVRC2012.npz (the release's initialisation) carries a 1000-class ImageNet
    head; fine-tuning loads everything else and keeps the zero head of our size."""
    units, wf = config_units(TINY)
    rows = bit_npz_table(units, wf, head_size=1000)
    arrays = fake_npz_arrays(rows, seed=2)
    path = tmp_path / "BiT-M-R50x1-ILSVRC2012.npz"
    np.savez(path, **arrays)
    model = create_model(TINY, head_size=10)
    model.load_from_npz(path, load_head=False)
    assert model.head_size == 10 and torch.count_nonzero(model.head.conv.weight) == 0
    for torch_name, npz_key, _ in rows:
        if not torch_name.startswith("head.conv"):
            assert torch.equal(dict(model.named_parameters())[torch_name], torch_layout(npz_key, arrays[npz_key]))
    with pytest.raises(ValueError, match="head/conv2d"):
        model.load_from_npz(path, load_head=True)


def test_npz_errors_name_every_bad_key_and_leave_model_untouched(tmp_path):
    units, wf = config_units(TINY)
    arrays = fake_npz_arrays(bit_npz_table(units, wf, head_size=3))
    missing = "resnet/block2/unit01/b/group_norm/beta"
    misshaped = "resnet/block3/unit01/a/proj/standardized_conv2d/kernel"
    del arrays[missing]
    arrays[misshaped] = np.zeros((1, 1, 7, 7), np.float32)
    path = tmp_path / "BiT-M-R50x1.npz"
    np.savez(path, **arrays)

    model = create_model(TINY, head_size=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as error:
        model.load_from_npz(path)
    message = str(error.value)
    assert missing in message and misshaped in message
    assert str(path) in message and "does the model name match" in message and "\n" not in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        model.load_from_npz(tmp_path / "nowhere.npz")


# -- 3. lossless conversion, CAM ------------------------------------------------------------
@pytest.mark.parametrize("resolution", [32, 64, 96])
def test_pooled_dense_logits_equal_image_logits(resolution):
    torch.manual_seed(0)
    model = create_model(TINY, head_size=6, zero_head=False)
    model.eval()
    weight, bias = model.head_parameters()
    assert weight.shape == (6, model.feature_dim) and bias.shape == (6,)
    assert torch.count_nonzero(weight) > 0

    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        logits, pooled = model.forward_with_features(x)
        dense = model.dense_logits(x)
        cam = model.cam(x)
        upsampled = model.dense_logits(x, upsample=True)
        plain_logits = model(x)
    side = resolution // 16  # ResNetV2-Tiny: output stride 16
    assert dense.shape == (2, 6, side, side)
    pooled_dense = F.adaptive_avg_pool2d(dense, 1).flatten(1)
    torch.testing.assert_close(pooled_dense, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain_logits, logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled @ weight.T + bias, logits, rtol=0, atol=1e-5)
    assert torch.equal(cam, dense.clamp(min=0))
    assert upsampled.shape == (2, 6, resolution, resolution)


def test_dense_upsample_follows_non_square_input():
    model = create_model(TINY, head_size=9)
    assert model.head_size == 9 and torch.count_nonzero(model.head.conv.weight) == 0
    with torch.no_grad():
        out = model.dense_logits(torch.randn(1, 3, 64, 96), upsample=True)
    assert out.shape == (1, 9, 64, 96)


# -- 4. weight standardisation and bf16 autocast ---------------------------------------------
def test_std_conv_matches_numpy_standardisation():
    torch.manual_seed(0)
    conv = StdConv2d(3, 8, kernel_size=3, padding=1, bias=True)
    x = torch.randn(2, 3, 9, 9)
    w = conv.weight.detach().double().numpy()
    mean = w.mean(axis=(1, 2, 3), keepdims=True)
    var = w.var(axis=(1, 2, 3), keepdims=True)  # biased, as in BiT
    w_hat = torch.from_numpy((w - mean) / np.sqrt(var + 1e-10)).float()
    expected = F.conv2d(x, w_hat, conv.bias, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_std_conv_gradient_matches_the_var_mean_formula():
    """The fused layer_norm standardisation gives BiT's var_mean formula's weight gradient."""
    torch.manual_seed(0)
    conv = StdConv2d(4, 6, kernel_size=3, padding=1, bias=False)
    x = torch.randn(2, 4, 7, 7)
    conv(x).square().sum().backward()
    weight = conv.weight.detach().clone().requires_grad_()
    var, mean = torch.var_mean(weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
    F.conv2d(x, (weight - mean) / torch.sqrt(var + 1e-10), padding=1).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, weight.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 66, 66), (2, 5, 7, 9), (1, 2, 3, 3), (3, 4, 4, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_root_pool_equals_max_pool2d_values_and_gradients(shape, channels_last):
    torch.manual_seed(0)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours_in, reference_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = MaxPool3x3Stride2()(ours_in)
    reference = F.max_pool2d(reference_in, kernel_size=3, stride=2)
    assert torch.equal(ours, reference)
    upstream = torch.randn_like(reference)
    ours.backward(upstream)
    reference.backward(upstream)
    torch.testing.assert_close(ours_in.grad, reference_in.grad)  # no ties in random floats


def test_std_conv_standardises_in_float32_under_autocast():
    """Weights 100 + 0.01 * noise: in bf16 (spacing 0.5 at 100) the noise vanishes and the
    standardised kernel would be garbage; in float32 it is exact to ~1e-3."""
    torch.manual_seed(0)
    conv = StdConv2d(16, 16, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(100.0 + 0.01 * torch.randn_like(conv.weight))
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        reference = conv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv.standardized_weight().dtype == torch.float32
            mixed = conv(x)
    assert mixed.dtype == torch.bfloat16
    assert (mixed.float() - reference).norm() / reference.norm() < 2e-2


def test_bf16_autocast_logits_close_to_float32():
    """Relative error ||bf16 - fp32|| / ||fp32|| < 6e-2 for randomly initialised
    ResNetV2-Tiny at 64x64 (measured 1.5e-2 .. 3.1e-2 over 10 seeds: a random net
    amplifies bf16 rounding). Every conv weight is also shifted by +50, which weight
    standardisation cancels exactly in float32 but would wreck a bf16 standardisation."""
    torch.manual_seed(0)
    model = create_model(TINY, head_size=10, zero_head=False)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        for module in model.modules():
            if isinstance(module, StdConv2d):
                module.weight.add_(50.0)
        shifted = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    assert mixed.dtype == torch.bfloat16
    assert (shifted - reference).norm() / reference.norm() < 1e-2
    assert (mixed.float() - reference).norm() / reference.norm() < 6e-2


# -- 5. checked state-dict loading -------------------------------------------------------------
def test_load_state_dict_checked_accepts_ddp_prefix_and_rejects_other_head(tmp_path):
    torch.manual_seed(0)
    trained = create_model(TINY, head_size=4, zero_head=False)
    ddp_state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    source = tmp_path / "cifar10.pth.tar"

    fresh = create_model(TINY, head_size=4)
    assert load_state_dict_checked(fresh, ddp_state, source) is fresh
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)

    with pytest.raises(ValueError) as error:
        load_state_dict_checked(create_model(TINY, head_size=7), ddp_state, source)
    message = str(error.value)
    assert "4" in message and "7" in message and str(source) in message

    incomplete = dict(trained.state_dict())
    del incomplete["body.block1.unit01.conv2.weight"]
    with pytest.raises(ValueError, match="1 weights missing .body.block1.unit01.conv2.weight") as error:
        load_state_dict_checked(create_model(TINY, head_size=4), incomplete, source)
    assert str(source) in str(error.value)


# -- 6. all named models --------------------------------------------------------------------
def bit_parameter_count(block_units, width_factor, head_size):
    """Hand count: convs have no bias except the head; each GroupNorm has 2 * channels."""
    root = int(64 * width_factor)
    total, cin = 7 * 7 * 3 * root, root
    for b, units in enumerate(block_units, start=1):
        cout = int(256 * width_factor) * 2 ** (b - 1)
        cmid = cout // 4
        for u in range(units):
            total += 2 * cin + cin * cmid + 2 * cmid + 9 * cmid * cmid + 2 * cmid + cmid * cout
            if u == 0:
                total += cin * cout
            cin = cout
    return total + 2 * cin + cin * head_size + head_size


def test_all_bit_names_construct_with_right_widths():
    expected_names = {f"BiT-{s}-{d}" for s in "SM"
                      for d in ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4")}
    cifar_names = {f"ResNetV2-C32-{size}{norm}" for size in "SML" for norm in ("", "-G8", "-BN")}  # test_cifar_backbone.py
    cifar_names |= {f"ResNetV2-C32P-{size}{norm}" for size in "SW" for norm in ("", "-BN")}
    cifar_names |= {f"{name}-{stem}" for name in ("ResNetV2-C32-S-BN", "ResNetV2-C32P-W-BN")
                    for stem in ("Whiten", "WhitenReLU")}  # test_fast_recipe.py
    assert expected_names | {TINY} | cifar_names == set(KNOWN_MODELS)
    depths = {"R50": (3, 4, 6, 3), "R101": (3, 4, 23, 3), "R152": (3, 8, 36, 3)}
    with torch.device("meta"):  # shapes only: the x4 models would need GBs otherwise
        for name in sorted(expected_names):
            depth, width = name.split("-")[2].split("x")
            model = create_model(name, head_size=1000)
            assert isinstance(model, ResNetV2) and model.model_name == name
            assert model.feature_dim == 2048 * int(width)
            assert tuple(len(block) for block in model.body) == depths[depth]
            n_params = sum(p.numel() for p in model.parameters())
            assert n_params == bit_parameter_count(depths[depth], int(width), 1000), name
    with torch.device("meta"):
        r50 = create_model(R50, head_size=1000)
    backbone = sum(p.numel() for n, p in r50.named_parameters() if not n.startswith("head.conv"))
    assert 23.4e6 < backbone < 23.6e6  # BiT-R50x1 backbone, as published
    assert KNOWN_MODELS["BiT-M-R152x4"].width_factor == 4


def test_tiny_model_has_no_weights_and_runs_small():
    assert not KNOWN_MODELS[TINY].has_pretrained_weights
    assert KNOWN_MODELS[R50].has_pretrained_weights
    model = create_model(TINY, head_size=3)
    assert model.feature_dim == 1024 and model.root.conv.out_channels == 32
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_half_stride_doubles_the_feature_map_and_keeps_the_weights():
    """The release's half_stride: last block stride 1, so 128 px -> 8x8 instead of 4x4."""
    x = torch.randn(1, 3, 128, 128)
    plain, halved = create_model(R50, head_size=3), create_model(R50, head_size=3, half_stride=True)
    halved.load_state_dict(plain.state_dict(), strict=True)
    with torch.no_grad():
        assert plain.feature_map(x).shape[-2:] == (4, 4)
        assert halved.feature_map(x).shape[-2:] == (8, 8)
    assert halved.body.block4.unit01.conv2.stride == (1, 1)
    assert halved.body.block4.unit01.downsample.stride == (1, 1)
    # ResNetV2-Tiny already has stride 1 there; half_stride changes nothing
    for half_stride in (False, True):
        with torch.no_grad():
            assert create_model(TINY, head_size=3, half_stride=half_stride).feature_map(
                torch.randn(1, 3, 64, 64)).shape[-2:] == (4, 4)


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="BiT-M-R50x1") as error:
        create_model("BiT-M-R18x1", head_size=10)
    assert "ResNetV2-Tiny" in str(error.value)
