"""The CIFAR-resolution BiT-style backbones (ResNetV2-C32-*) against independent computations: the
npz names written out by hand from BiT's convention, a float64 forward from the raw npz arrays,
shapes worked out from the strides, the lossless pooled/dense conversion and the CAM."""
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.resnetv2 import KNOWN_MODELS, create_model, npz_key_map
from tests.test_resnetv2 import fake_npz_arrays, standardized, torch_layout

# the npz-capable ones (GroupNorm); the BatchNorm twins and whitening stems have no npz form
CIFAR_MODELS = [name for name in KNOWN_MODELS if name.startswith("ResNetV2-C32-") and KNOWN_MODELS[name].norm != "batch"]
SMALL = "ResNetV2-C32-S"


def test_the_cifar_family_is_registered():
    assert {"ResNetV2-C32-S", "ResNetV2-C32-M", "ResNetV2-C32-L"} <= set(CIFAR_MODELS)


def basic_npz_table(root, widths, units, head_size):
    """[(torch name, npz key, npz shape)] of a 3x3 stem and pre-activation basic units: a/b = the
    unit's first/second 3x3 conv, a/proj = the projection of its first unit (HWIO kernels)."""
    rows = [("root.conv.weight", "resnet/root_block/standardized_conv2d/kernel", (3, 3, 3, root))]
    cin = root
    for b, (cout, count) in enumerate(zip(widths, units), start=1):
        for u in range(1, count + 1):
            t, k = f"body.block{b}.unit{u:02d}.", f"resnet/block{b}/unit{u:02d}/"
            rows += [
                (t + "gn1.weight", k + "a/group_norm/gamma", (cin,)),
                (t + "gn1.bias", k + "a/group_norm/beta", (cin,)),
                (t + "conv1.weight", k + "a/standardized_conv2d/kernel", (3, 3, cin, cout)),
                (t + "gn2.weight", k + "b/group_norm/gamma", (cout,)),
                (t + "gn2.bias", k + "b/group_norm/beta", (cout,)),
                (t + "conv2.weight", k + "b/standardized_conv2d/kernel", (3, 3, cout, cout)),
            ]
            if u == 1:
                rows.append((t + "downsample.weight", k + "a/proj/standardized_conv2d/kernel", (1, 1, cin, cout)))
            cin = cout
    rows += [
        ("head.gn.weight", "resnet/group_norm/gamma", (cin,)),
        ("head.gn.bias", "resnet/group_norm/beta", (cin,)),
        ("head.conv.weight", "resnet/head/conv2d/kernel", (1, 1, cin, head_size)),
        ("head.conv.bias", "resnet/head/conv2d/bias", (head_size,)),
    ]
    return rows


def table_of(name, head_size):
    config = KNOWN_MODELS[name]
    return basic_npz_table(config.root_width, config.block_widths, config.block_units, head_size)


def npz_group_norm(arrays, h, prefix):
    """GroupNorm(32) of h with the raw npz scale and offset under prefix, in float64."""
    return F.group_norm(h, 32, torch_layout("gamma", arrays[prefix + "gamma"]).double(),
                        torch_layout("beta", arrays[prefix + "beta"]).double(), eps=1e-5)


def npz_head(arrays, h):
    """(logits, pooled) of the head from raw npz arrays: GN, ReLU, mean over positions, affine."""
    pooled = F.relu(npz_group_norm(arrays, h, "resnet/group_norm/")).mean(dim=(2, 3))
    kernel = torch.from_numpy(arrays["resnet/head/conv2d/kernel"]).double()
    return pooled @ kernel[0, 0] + torch.from_numpy(arrays["resnet/head/conv2d/bias"]).double(), pooled


def functional_basic_forward(arrays, units, x):
    """The whole network in float64 from raw npz arrays: 3x3 stem, then per unit
    a = ReLU(GN(h)), out = conv_b(ReLU(GN(conv_a(a, stride)))) + (proj(a, stride) or h); stride 2
    on every block's first unit; head GN, ReLU, mean, affine. Returns (logits, pooled)."""
    gn = functools.partial(npz_group_norm, arrays)

    def conv(h, key, stride=1, padding=0):
        return F.conv2d(h, standardized(arrays[key]), stride=stride, padding=padding)

    h = conv(x, "resnet/root_block/standardized_conv2d/kernel", padding=1)
    for b, count in enumerate(units, start=1):
        for u in range(1, count + 1):
            k = f"resnet/block{b}/unit{u:02d}/"
            stride = 2 if u == 1 else 1
            a = F.relu(gn(h, k + "a/group_norm/"))
            residual = conv(a, k + "a/proj/standardized_conv2d/kernel", stride) if u == 1 else h
            out = conv(a, k + "a/standardized_conv2d/kernel", stride, padding=1)
            h = conv(F.relu(gn(out, k + "b/group_norm/")), k + "b/standardized_conv2d/kernel", padding=1) + residual
    return npz_head(arrays, h)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_npz_key_map_is_bit_naming_of_the_basic_units(name):
    model = create_model(name, head_size=10)
    rows = table_of(name, 10)
    assert npz_key_map(model) == {t: k for t, k, _ in rows}
    arrays = model.npz_arrays(include_head=True)
    assert {k: v.shape for k, v in arrays.items()} == {k: s for _, k, s in rows}


def test_npz_round_trip_and_forward_from_raw_arrays():
    rows = table_of(SMALL, 4)
    arrays = fake_npz_arrays(rows, seed=3)
    model = create_model(SMALL, head_size=4)
    model.load_from_npz(arrays)
    again = create_model(SMALL, head_size=4)
    again.load_from_npz(model.npz_arrays(include_head=True))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))

    model.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, pooled = model.forward_with_features(x)
    ref_logits, ref_pooled = functional_basic_forward(arrays, KNOWN_MODELS[SMALL].block_units, x)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-9, atol=1e-9)


def test_a_body_exported_without_head_fine_tunes_into_another_head_size():
    source = create_model(SMALL, head_size=200, zero_head=False)
    target = create_model(SMALL, head_size=10)
    target.load_from_npz(source.npz_arrays(), load_head=False)
    assert torch.equal(target.root.conv.weight, source.root.conv.weight)
    assert torch.count_nonzero(target.head.conv.weight) == 0
    with pytest.raises(ValueError, match="cannot load BiT weights"):
        create_model("ResNetV2-Tiny", head_size=10).load_from_npz(source.npz_arrays(), load_head=False)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_a_32_pixel_image_gives_a_4x4_map_of_the_last_width(name):
    model = create_model(name, head_size=11, zero_head=False).eval()
    with torch.no_grad():
        features = model.feature_map(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, KNOWN_MODELS[name].block_widths[-1], 4, 4)
    assert model.feature_dim == KNOWN_MODELS[name].block_widths[-1]
    half = create_model(name, head_size=11, half_stride=True)  # the last block keeps the resolution
    with torch.no_grad():
        assert half.dense_logits(torch.randn(1, 3, 32, 32)).shape == (1, 11, 8, 8)


@pytest.mark.parametrize("resolution", [32, 48])
def test_pooled_dense_logits_equal_image_logits_and_cam_is_their_positive_part(resolution):
    torch.manual_seed(0)
    model = create_model(SMALL, head_size=11, zero_head=False).eval()  # a (K+1) head of a 10-class set
    x = torch.randn(3, 3, resolution, resolution)
    with torch.no_grad():
        logits, pooled = model.forward_with_features(x)
        dense = model.dense_logits(x)
        cam = model.cam(x)
        upsampled = model.dense_logits(x, upsample=True)
    weight, bias = model.head_parameters()
    assert dense.shape == (3, 11, resolution // 8, resolution // 8)
    torch.testing.assert_close(dense.mean(dim=(2, 3)), logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled @ weight.T + bias, logits, rtol=0, atol=1e-5)
    assert torch.equal(cam, dense.clamp(min=0))
    assert upsampled.shape == (3, 11, resolution, resolution)


@pytest.mark.parametrize("name", [SMALL, "ResNetV2-C32P-S"])
def test_the_batchnorm_twin_differs_only_in_its_norm_layers_and_has_no_npz_form(name):
    group, batch = create_model(name, head_size=10), create_model(name + "-BN", head_size=10)
    names = {n: type(m) for n, m in group.named_modules()}
    twins = {n: type(m) for n, m in batch.named_modules()}
    assert names.keys() == twins.keys()
    differing = {n for n in names if names[n] is not twins[n]}
    assert differing and all(names[n] is torch.nn.GroupNorm and twins[n] is torch.nn.BatchNorm2d for n in differing)
    assert batch.feature_map(torch.randn(2, 3, 32, 32)).shape == (2, 256, 4, 4)
    assert batch.cam(torch.randn(2, 3, 32, 32)).shape == (2, 10, 4, 4)
    with pytest.raises(ValueError, match="no BiT .npz form"):
        batch.npz_arrays()


def test_the_group8_twin_has_eight_groups_everywhere_and_the_same_npz_keys():
    group, group8 = create_model(SMALL, head_size=10), create_model(SMALL + "-G8", head_size=10)
    norms = [m for m in group8.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.num_groups for m in norms} == {8}
    assert {m.num_groups for m in group.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}
    assert group8.npz_arrays().keys() == group.npz_arrays().keys()


# -- conv-pool units (ResNetV2-C32P-*): airbench's conv group in pre-activation order -------------
CONV_POOL_MODELS = [name for name in KNOWN_MODELS if name.startswith("ResNetV2-C32P-") and KNOWN_MODELS[name].norm != "batch"]


def test_the_conv_pool_family_is_registered_with_airbench94_widths_for_w():
    assert set(CONV_POOL_MODELS) == {"ResNetV2-C32P-S", "ResNetV2-C32P-W"}
    assert KNOWN_MODELS["ResNetV2-C32P-W"].block_widths == (64, 256, 256)
    assert {name + "-BN" for name in CONV_POOL_MODELS} <= set(KNOWN_MODELS)


def conv_pool_npz_table(root, widths, head_size):
    """As basic_npz_table, without a/proj: a conv-pool unit has no shortcut."""
    rows = [row for row in basic_npz_table(root, widths, (1,) * len(widths), head_size) if "/a/proj/" not in row[1]]
    assert len(rows) == 1 + 6 * len(widths) + 4
    return rows


def functional_conv_pool_forward(arrays, blocks, x):
    """Float64 from raw npz arrays: 3x3 stem, then per block h = conv_b(ReLU(GN(maxpool2(conv_a(ReLU(GN(h))))))),
    head GN, ReLU, mean, affine. Returns (logits, pooled)."""
    gn = functools.partial(npz_group_norm, arrays)

    def conv(h, key):
        return F.conv2d(h, standardized(arrays[key]), padding=1)

    h = conv(x, "resnet/root_block/standardized_conv2d/kernel")
    for b in range(1, blocks + 1):
        k = f"resnet/block{b}/unit01/"
        out = F.max_pool2d(conv(F.relu(gn(h, k + "a/group_norm/")), k + "a/standardized_conv2d/kernel"), 2)
        h = conv(F.relu(gn(out, k + "b/group_norm/")), k + "b/standardized_conv2d/kernel")
    return npz_head(arrays, h)


@pytest.mark.parametrize("name", CONV_POOL_MODELS)
def test_conv_pool_npz_keys_round_trip_and_forward_from_raw_arrays(name):
    config = KNOWN_MODELS[name]
    rows = conv_pool_npz_table(config.root_width, config.block_widths, 3)
    model = create_model(name, head_size=3)
    assert npz_key_map(model) == {t: k for t, k, _ in rows}
    arrays = fake_npz_arrays(rows, seed=5)
    model.load_from_npz(arrays)
    assert {k: v.shape for k, v in model.npz_arrays(include_head=True).items()} == {k: s for _, k, s in rows}
    model.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        logits, pooled = model.forward_with_features(x)
        dense = model.dense_logits(x)
    ref_logits, ref_pooled = functional_conv_pool_forward(arrays, len(config.block_widths), x)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-9, atol=1e-9)
    assert dense.shape == (2, 3, 4, 4)  # 32 px pooled three times
    torch.testing.assert_close(dense.mean(dim=(2, 3)), logits, rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # the last block keeps the resolution: no pool there
        assert create_model(name, head_size=3, half_stride=True).dense_logits(torch.randn(1, 3, 32, 32)).shape == (1, 3, 8, 8)
