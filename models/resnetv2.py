"""BiT ResNetV2 (Kolesnikov et al., "Big Transfer (BiT): General Visual Representation
Learning", ECCV 2020), written for DFB's classifier, dense (K+1)-class network and CAMs.

Architecture: pre-activation bottleneck units with GroupNorm(32) and weight-standardised
convolutions (Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and
Weight Standardization"); head = GN -> ReLU -> global average pool -> 1x1 conv.

Every public forward goes through one feature computation, ``feature_map``:

    F(x) = ReLU(GN_head(body(root(x))))            [N, D, h, w]
    pooled(x) = mean_{h,w} F(x)                     [N, D]
    logits(x) = W pooled(x) + b                     [N, C]
    dense(x)  = W F(x) + b  (at every position)     [N, C, h, w]

Because the head is affine, mean_{h,w} dense(x) == logits(x) exactly ("lossless
conversion" of a dense network into an image classifier, DFB Sec. 3).

Parameter names follow the BiT/DFB PyTorch checkpoints (root.conv, body.blockB.unitUU.*,
head.gn, head.conv), so their state dicts load unchanged.
"""
import numbers
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_STD_EPS = 1e-10
GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-5


@dataclass(frozen=True)
class ResNetV2Config:
    """Depth (units per block), width and stride of the last block of one named model; for the
    CIFAR-resolution family (stem "cifar") also its unit, root width, block widths and strides."""
    block_units: tuple
    width_factor: float
    has_pretrained_weights: bool = True
    last_block_stride: int = 2
    stem: str = "bit"  # "bit": 7x7 stride-2 conv + 3x3 stride-2 max pool; "cifar": one 3x3 stride-1 conv;
    # "whiten": a frozen, not standardised 3x3 stride-1 conv of WHITEN_WIDTH filters (patch whitening)
    unit: str = "bottleneck"  # "bottleneck" (BiT), "basic" (a pre-activation pair of 3x3 convs) or "convpool"
    root_width: int | None = None  # None: 64 * width_factor (BiT)
    block_widths: tuple | None = None  # None: 256 * width_factor * 2^(i-1) (BiT)
    block_strides: tuple | None = None  # None: 1, 2, 2, last_block_stride (BiT)
    norm: str = "group"  # "group" (BiT's 32 groups), "group8" (8 groups) or "batch" (no npz form)
    stem_norm: bool = True  # False: the first unit's first norm is left out (the stem's output goes into a ReLU)


_BIT_DEPTHS = {"R50": (3, 4, 6, 3), "R101": (3, 4, 23, 3), "R152": (3, 8, 36, 3)}
_BIT_VARIANTS = (("R50", 1), ("R50", 3), ("R101", 1), ("R101", 3), ("R152", 2), ("R152", 4))

KNOWN_MODELS = {
    f"BiT-{upstream}-{depth}x{width}": ResNetV2Config(_BIT_DEPTHS[depth], width)
    for upstream in ("S", "M")
    for depth, width in _BIT_VARIANTS
}
# Not a BiT model and has NO pretrained weights: one unit per block at half width
# (root 32 channels, feature_dim 1024), for offline demos and fast CPU tests. Its last block
# keeps the resolution (output stride 16), so a 64-pixel image gives the 4x4 map that BiT
# gives at 128 pixels, at a fraction of the cost: CAMs and dense logits stay meaningful.
KNOWN_MODELS["ResNetV2-Tiny"] = ResNetV2Config((1, 1, 1, 1), 0.5, has_pretrained_weights=False,
                                               last_block_stride=1)
# CIFAR resolution, BiT-style (pre-activation, GroupNorm, weight-standardised convs, BiT's npz keys):
# a 3x3 stem keeps the 32-pixel image's resolution and three stride-2 stages of pre-activation
# basic units bring it to a 4x4 final map (the map BiT-M-R50x1 gives at 128 pixels), the shape of
# the fast CIFAR recipes (a few wide 3x3 convs per stage). No pretrained weights. The widths and
# depth were chosen by measurement: docs/CIFAR_RECIPE.md.
_CIFAR_SIZES = (("S", (1, 1, 1), 32, (64, 128, 256)),
                ("M", (1, 1, 1), 32, (96, 192, 384)),
                ("L", (1, 1, 1), 64, (128, 256, 512)))
KNOWN_MODELS.update({
    f"ResNetV2-C32-{size}{suffix}": ResNetV2Config(units, 1.0, has_pretrained_weights=False, stem="cifar",
                                                   unit="basic", root_width=root, block_widths=widths,
                                                   block_strides=(2,) * len(units), norm=norm)
    for size, units, root, widths in _CIFAR_SIZES
    # "-BN": the same network with BatchNorm for GroupNorm (PRESET=cpu's ResNetV2-C32-S-BN, chosen on
    # held-out images by docs/CIFAR_RECIPE.md §6; it has no npz form);
    # "-G8": GroupNorm with 8 groups, so no group of the narrow first layers is a single channel
    for suffix, norm in (("", "group"), ("-G8", "group8"), ("-BN", "batch"))
})
# The same stem and head with conv-pool units instead of residual pairs: each stage is airbench's
# conv group (KellerJordan/cifar10-airbench) in pre-activation order, a 3x3 conv at the stage's input
# resolution, a 2x2 max pool, a second 3x3 conv, no shortcut. The first conv sees the full resolution
# where a stride-2 conv sees a quarter of the positions; "-W" has airbench94's widths (64, 256, 256).
# Measured against the residual network by docs/CIFAR_RECIPE.md §10 (not adopted: no gain at 0.4 PFLOP).
_CONV_POOL_SIZES = (("S", 32, (64, 128, 256)), ("W", 32, (64, 256, 256)))
KNOWN_MODELS.update({
    f"ResNetV2-C32P-{size}{suffix}": ResNetV2Config((1, 1, 1), 1.0, has_pretrained_weights=False, stem="cifar",
                                                    unit="convpool", root_width=root, block_widths=widths,
                                                    block_strides=(2, 2, 2), norm=norm)
    for size, root, widths in _CONV_POOL_SIZES
    for suffix, norm in (("", "group"), ("-BN", "batch"))
})
# airbench's first layer on the BatchNorm networks: the stem is a frozen, plain 3x3 conv whose filters whiten
# the image's 3x3 patches (`patch_whitening_filters`; train.py sets them from the training images when a run
# starts). 3x3 with padding 1, where airbench has 2x2 without padding, so the final map stays 4x4 at 32 px.
# Measured by docs/CIFAR_RECIPE.md §11.
WHITEN_KERNEL = 3
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL ** 2  # every eigenvector of the patch moments and its negative
# "-WhitenReLU": the whitened responses go straight into the first unit's ReLU, as airbench's go into its GELU;
# "-Whiten" normalises them first (the pre-activation unit's BatchNorm), which rescales every component to unit
# variance and so undoes the eps that damps the faint ones (§11's stage 7 measured it, stage 7b the other).
for _name in ("ResNetV2-C32-S-BN", "ResNetV2-C32P-W-BN"):
    KNOWN_MODELS[f"{_name}-Whiten"] = replace(KNOWN_MODELS[_name], stem="whiten", root_width=WHITEN_WIDTH)
    KNOWN_MODELS[f"{_name}-WhitenReLU"] = replace(KNOWN_MODELS[f"{_name}-Whiten"], stem_norm=False)


class StdConv2d(nn.Conv2d):
    """Conv2d with a weight standardised per output channel before every use:

        w_hat = (w - mean(w)) / sqrt(var(w) + 1e-10),

    mean and biased variance taken over (in_channels, kh, kw).
    """

    def standardized_weight(self) -> torch.Tensor:
        """The standardised kernel. Computed in at least float32 even under autocast or for a
        half-precision model: w - mean(w) cancels catastrophically in bf16."""
        compute_dtype = torch.promote_types(self.weight.dtype, torch.float32)
        weight = self.weight.to(compute_dtype)
        # layer_norm over (in_channels, kh, kw) is exactly the formula above (mean
        # and biased variance, eps inside the root) in one fused kernel, forward and backward;
        # var_mean over dims (1, 2, 3) plus four element-wise ops took 25x longer for a
        # 256x256x3x3 kernel on the CPU, a quarter of a small training step.
        standardized = F.layer_norm(weight, weight.shape[1:], eps=WEIGHT_STD_EPS)
        # Back to the parameter dtype so a bf16 model (no autocast) gets matching operands;
        # under autocast the parameter is float32 and the conv itself does the down-cast.
        return standardized.to(self.weight.dtype)

    def forward(self, x):
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class MaxPool3x3Stride2(nn.Module):
    """nn.MaxPool2d(kernel_size=3, stride=2), BiT's root pool. On the CPU it is computed as the
    maximum over unfolded windows, rows then columns: the same values, 7x faster there than aten's
    max_pool2d on NCHW tensors (whose kernel took a seventh of a CAM pass). Other devices use
    F.max_pool2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or min(x.shape[-2:]) < 3:
            return F.max_pool2d(x, kernel_size=3, stride=2)
        return x.unfold(-2, 3, 2).amax(-1).unfold(-1, 3, 2).amax(-1)


def _group_norm(channels):
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=GROUP_NORM_EPS)


def _group_norm_8(channels):
    return nn.GroupNorm(8, channels, eps=GROUP_NORM_EPS)


# The normalisation layer of a network. BiT's GroupNorm(32) is the default of every named model.
# With 32 groups, the 32 channels of the CIFAR stem are normalised one by one, per image (instance
# norm); "group8" keeps 4 or more channels per group there, with the same npz keys. BatchNorm (PRESET=cpu's
# network, chosen by docs/CIFAR_RECIPE.md §6) has no BiT npz form (its running statistics have no
# key there).
NORM_LAYERS = {"group": _group_norm, "group8": _group_norm_8, "batch": nn.BatchNorm2d}


def _projection(cin, cout, stride):
    """The shortcut's 1x1 conv (same stride) of a unit that changes width or resolution, else None."""
    if stride == 1 and cin == cout:
        return None
    return StdConv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (He et al., "Identity Mappings in Deep Residual Networks"),
    with the stride on the 3x3 conv:

        a = ReLU(GN1(x));  r = proj(a) if the unit projects else x
        out = conv3(ReLU(GN3(conv2(ReLU(GN2(conv1(a))))))) + r

    The unit projects when stride != 1 or cin != cout (1x1 conv, same stride).
    """

    def __init__(self, cin, cout, cmid, stride, norm=_group_norm):
        super().__init__()
        self.gn1 = norm(cin)
        self.conv1 = StdConv2d(cin, cmid, kernel_size=1, bias=False)
        self.gn2 = norm(cmid)
        self.conv2 = StdConv2d(cmid, cmid, kernel_size=3, stride=stride, padding=1, bias=False)
        self.gn3 = norm(cmid)
        self.conv3 = StdConv2d(cmid, cout, kernel_size=1, bias=False)
        self.downsample = _projection(cin, cout, stride)

    def forward(self, x):
        activated = F.relu(self.gn1(x))
        residual = x if self.downsample is None else self.downsample(activated)
        out = self.conv1(activated)
        out = self.conv2(F.relu(self.gn2(out)))
        out = self.conv3(F.relu(self.gn3(out)))
        return out + residual


class BiTHead(nn.Module):
    """Holds the head's parameters (gn, conv); ResNetV2 decides how they are applied."""

    def __init__(self, feature_dim, head_size, zero_init, norm=_group_norm):
        super().__init__()
        self.gn = norm(feature_dim)
        self.conv = _head_conv(feature_dim, head_size, zero_init)


def _head_conv(feature_dim, head_size, zero_init):
    if not isinstance(head_size, numbers.Integral) or head_size < 1:
        raise ValueError(f"head_size must be a positive int, got {head_size!r}")
    conv = nn.Conv2d(feature_dim, head_size, kernel_size=1, bias=True)
    if zero_init:
        # BiT fine-tuning starts from a zero head (BiT HyperRule).
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


class PreActBasic(nn.Module):
    """Pre-activation residual pair of 3x3 convs (He et al., "Identity Mappings in Deep Residual
    Networks", the unit of their CIFAR networks), with the stride on the first conv:

        a = ReLU(GN1(x));  r = proj(a) if the unit projects else x
        out = conv2(ReLU(GN2(conv1(a)))) + r

    Its layers carry the bottleneck's names (gn1, conv1, gn2, conv2, downsample), so BiT's npz keys
    (a/, b/, a/proj) name them too."""

    def __init__(self, cin, cout, stride, norm=_group_norm):
        super().__init__()
        self.gn1 = norm(cin)
        self.conv1 = StdConv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.gn2 = norm(cout)
        self.conv2 = StdConv2d(cout, cout, kernel_size=3, padding=1, bias=False)
        self.downsample = _projection(cin, cout, stride)

    def forward(self, x):
        activated = F.relu(self.gn1(x))
        residual = x if self.downsample is None else self.downsample(activated)
        out = self.conv1(activated)
        out = self.conv2(F.relu(self.gn2(out)))
        return out + residual


class PreActConvPool(nn.Module):
    """airbench's conv group in pre-activation order, no shortcut; stride 2 is a 2x2 max pool between
    the two 3x3 convs (stride 1: none):

        out = conv2(ReLU(GN2(pool(conv1(ReLU(GN1(x)))))))

    The layers carry the basic unit's names (gn1, conv1, gn2, conv2), so BiT's npz keys (a/, b/) name
    them; there is no a/proj."""

    def __init__(self, cin, cout, stride, norm=_group_norm):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"a conv-pool unit pools by 2 or not at all, got stride {stride!r}")
        self.gn1 = norm(cin)
        self.conv1 = StdConv2d(cin, cout, kernel_size=3, padding=1, bias=False)
        # aten's max_pool2d: in training 1.8x faster on the CPU than a maximum over strided slices or
        # a reshape, whose backward passes are slow (bench: 395 against 224 img/s for C32P-S-BN)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2) if stride == 2 else nn.Identity()
        self.gn2 = norm(cout)
        self.conv2 = StdConv2d(cout, cout, kernel_size=3, padding=1, bias=False)

    def forward(self, x):
        out = self.pool(self.conv1(F.relu(self.gn1(x))))
        return self.conv2(F.relu(self.gn2(out)))


def _root(stem, root_width):
    if stem == "bit":
        return nn.Sequential(OrderedDict([
            ("conv", StdConv2d(3, root_width, kernel_size=7, stride=2, padding=3, bias=False)),
            ("pad", nn.ConstantPad2d(1, 0.0)),
            ("pool", MaxPool3x3Stride2()),
        ]))
    if stem == "cifar":
        return nn.Sequential(OrderedDict([
            ("conv", StdConv2d(3, root_width, kernel_size=3, stride=1, padding=1, bias=False))]))
    if stem == "whiten":
        if root_width != WHITEN_WIDTH:
            raise ValueError(f"a whitening stem has {WHITEN_WIDTH} filters, got root width {root_width}")
        # not weight-standardised (that would undo the whitening) and never trained (airbench freezes it too)
        conv = nn.Conv2d(3, root_width, kernel_size=WHITEN_KERNEL, stride=1, padding=WHITEN_KERNEL // 2, bias=False)
        conv.weight.requires_grad_(False)
        return nn.Sequential(OrderedDict([("conv", conv)]))
    raise ValueError(f"unknown stem {stem!r}: expected 'bit', 'cifar' or 'whiten'")


def patch_whitening_filters(images: torch.Tensor, kernel_size: int = WHITEN_KERNEL, eps: float = 5e-4) -> torch.Tensor:
    """The whitening stem's filters [2 * 3k^2, 3, k, k] from network inputs `images` [N, 3, H, W]: with
    M = mean over every k x k patch p of p p^T (uncentred, airbench's estimate) = V diag(lambda) V^T, the
    filters are the rows of diag(lambda + eps)^(-1/2) V^T, largest eigenvalue first, followed by their
    negatives (so a ReLU after the stem keeps both signs of every component). Over the patches of
    `images`, the first half of the filters' responses then has second moments diag(lambda / (lambda + eps))."""
    channels = images.shape[1]
    patches = F.unfold(images.double(), kernel_size)  # [N, C k k, positions], the order of a conv kernel
    patches = patches.transpose(1, 2).reshape(-1, channels * kernel_size ** 2)
    moments = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(moments)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors / torch.sqrt(eigenvalues + eps)).T
    filters = filters.reshape(-1, channels, kernel_size, kernel_size)
    return torch.cat([filters, -filters]).float()


def _unit(kind, cin, cout, stride, norm):
    if kind == "bottleneck":
        return PreActBottleneck(cin, cout, cout // 4, stride, norm)
    if kind == "basic":
        return PreActBasic(cin, cout, stride, norm)
    if kind == "convpool":
        return PreActConvPool(cin, cout, stride, norm)
    raise ValueError(f"unknown unit {kind!r}: expected 'bottleneck', 'basic' or 'convpool'")


class ResNetV2(nn.Module):
    """BiT ResNetV2. BiT's widths: root 64*wf, block i: cout = 256*wf*2^(i-1), cmid = cout/4,
    strides 1, 2, 2, last_block_stride (2 in BiT: output stride 32); feature_dim D = 2048*wf.
    root_width / block_widths / block_strides replace those rules (any number of blocks), stem
    "cifar" the 7x7 stride-2 conv and pool by one 3x3 stride-1 conv, unit "basic" the bottleneck
    by a pre-activation pair of 3x3 convs, unit "convpool" by a conv, 2x2 pool, conv group without
    shortcut; D is the last block's width. stem_norm=False leaves the first unit's first norm out."""

    def __init__(self, block_units, width_factor, head_size, zero_head=True, model_name="custom",
                 last_block_stride=2, stem="bit", unit="bottleneck", root_width=None, block_widths=None,
                 block_strides=None, norm="group", stem_norm=True):
        super().__init__()
        if norm not in NORM_LAYERS:
            raise ValueError(f"unknown norm {norm!r}: expected one of {', '.join(NORM_LAYERS)}")
        bit_layout = block_widths is None and block_strides is None
        if (bit_layout and len(block_units) != 4) or not block_units or any(int(n) < 1 for n in block_units):
            raise ValueError(f"block_units must be 4 positive counts (or one per block of block_widths), "
                             f"got {block_units!r}")
        if block_widths is None:
            block_widths = tuple(int(256 * width_factor) * 2 ** i for i in range(len(block_units)))
        if block_strides is None:
            block_strides = (1, 2, 2, last_block_stride)
        elif last_block_stride == 1:  # half_stride: the last block keeps the resolution
            block_strides = (*block_strides[:-1], 1)
        if not len(block_units) == len(block_widths) == len(block_strides):
            raise ValueError(f"one count, width and stride per block: got {block_units!r}, {block_widths!r}, "
                             f"{block_strides!r}")
        root_width = int(64 * width_factor) if root_width is None else root_width
        self.model_name = model_name
        self.feature_dim = block_widths[-1]  # 2048 * width_factor in BiT's layout
        self.stem = stem
        self.root = _root(stem, root_width)
        blocks, cin = [], root_width
        for index, (units, cout, stride) in enumerate(zip(block_units, block_widths, block_strides), start=1):
            unit_list = [(f"unit{u:02d}", _unit(unit, cin if u == 1 else cout, cout, stride if u == 1 else 1,
                                                NORM_LAYERS[norm]))
                         for u in range(1, int(units) + 1)]
            blocks.append((f"block{index}", nn.Sequential(OrderedDict(unit_list))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(blocks))
        if not stem_norm:
            self.body[0][0].gn1 = nn.Identity()
        self.head = BiTHead(self.feature_dim, head_size, zero_head, NORM_LAYERS[norm])
        self.norm = norm

    def root_is_whitening(self) -> bool:
        """Whether the stem is the frozen whitening conv, whose filters come from data (train.py)."""
        return self.stem == "whiten"

    @property
    def head_size(self) -> int:
        return self.head.conv.out_channels

    # -- forwards: all built on feature_map ------------------------------------------------
    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> ReLU(GN(body(root(x)))) of shape [N, D, h, w]."""
        return F.relu(self.head.gn(self.body(self.root(x))))

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, D]: feature_map averaged over its positions."""
        return self.feature_map(x).mean(dim=(2, 3))

    def _logits_from_pooled(self, pooled):
        return self.head.conv(pooled[:, :, None, None]).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C] image-level logits."""
        return self._logits_from_pooled(self.pooled_features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N, C], pooled features [N, D]) from one pass."""
        pooled = self.pooled_features(x)
        return self._logits_from_pooled(pooled), pooled

    def dense_logits(self, x: torch.Tensor, upsample: bool = False) -> torch.Tensor:
        """[N, C, h, w]: the head applied at every position of feature_map; with upsample,
        resized bilinearly (align_corners=False) to the input's H, W."""
        dense = self.head.conv(self.feature_map(x))
        if upsample:
            dense = F.interpolate(dense, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return dense

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps ReLU(dense_logits(x)), [N, C, h, w] (not upsampled)."""
        return F.relu(self.dense_logits(x))

    # -- head ------------------------------------------------------------------------------
    def head_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, D], b [C]): detached copies of the head, for scores such as ViM and ReAct."""
        conv = self.head.conv
        return conv.weight.detach().flatten(1).clone(), conv.bias.detach().clone()

    # -- BiT npz ---------------------------------------------------------------------------
    def npz_arrays(self, include_head: bool = False) -> dict[str, np.ndarray]:
        """This network's weights as an official BiT .npz holds them (``npz_key_map`` keys, convs
        HWIO, float32), so ``load_from_npz`` reads them back exactly. Without include_head the
        1x1 head conv is left out (a body to fine-tune; head.gn is part of the features and kept)."""
        return _npz_arrays(self, include_head)

    def load_from_npz(self, source: str | PathLike | Mapping[str, np.ndarray], load_head: bool = True) -> None:
        """Load official BiT weights (see ``npz_key_map``) from an .npz path or a mapping
        name -> array. With load_head=False head.conv is left untouched (fine-tuning);
        head.gn is always loaded. Missing or mis-shaped arrays raise one ValueError."""
        _load_npz(self, source, load_head)


def create_model(name: str, head_size: int, zero_head: bool = True, half_stride: bool = False) -> ResNetV2:
    """A ResNetV2 of a name in KNOWN_MODELS with a head of head_size classes.

    half_stride: the last block keeps the resolution (stride 1: output stride 16, a 128-pixel
    image gives an 8x8 feature map instead of 4x4), the release's `half_stride` option. The
    weights are the same, so BiT .npz files and checkpoints load either way."""
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model name {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    config = KNOWN_MODELS[name]
    return ResNetV2(config.block_units, config.width_factor, head_size, zero_head=zero_head,
                    model_name=name, last_block_stride=1 if half_stride else config.last_block_stride,
                    stem=config.stem, unit=config.unit, root_width=config.root_width,
                    block_widths=config.block_widths, block_strides=config.block_strides, norm=config.norm,
                    stem_norm=config.stem_norm)


# -- BiT .npz checkpoints ------------------------------------------------------------------
_UNIT_LAYERS_NPZ = {
    "gn1": "a/group_norm", "conv1": "a/standardized_conv2d",
    "gn2": "b/group_norm", "conv2": "b/standardized_conv2d",
    "gn3": "c/group_norm", "conv3": "c/standardized_conv2d",
    "downsample": "a/proj/standardized_conv2d",
}
_NPZ_PARAM_NAMES = {"group_norm": {"weight": "gamma", "bias": "beta"},
                    "conv2d": {"weight": "kernel", "bias": "bias"}}
_HEAD_CONV_PARAMS = ("head.conv.weight", "head.conv.bias")


def _layer_keys(torch_prefix, npz_prefix, layer):
    kind = "group_norm" if isinstance(layer, nn.GroupNorm) else "conv2d"
    return {f"{torch_prefix}.{param}": f"{npz_prefix}/{_NPZ_PARAM_NAMES[kind][param]}"
            for param, _ in layer.named_parameters()}


def npz_key_map(model: ResNetV2) -> dict[str, str]:
    """dict: torch parameter name -> key of the official BiT .npz (convs stored HWIO there)."""
    if not model.norm.startswith("group"):
        raise ValueError(f"model {model.model_name!r} uses {model.norm} norm, which has no BiT .npz form "
                         f"(BiT's npz holds GroupNorm scales and offsets only)")
    keys = _layer_keys("root.conv", "resnet/root_block/standardized_conv2d", model.root.conv)
    for block_name, block in model.body.named_children():
        for unit_name, unit in block.named_children():
            for layer_name, npz_layer in _UNIT_LAYERS_NPZ.items():
                layer = getattr(unit, layer_name, None)  # a basic unit has no gn3 / conv3
                if layer is not None:
                    keys.update(_layer_keys(f"body.{block_name}.{unit_name}.{layer_name}",
                                            f"resnet/{block_name}/{unit_name}/{npz_layer}", layer))
    keys.update(_layer_keys("head.gn", "resnet/group_norm", model.head.gn))
    keys.update(_layer_keys("head.conv", "resnet/head/conv2d", model.head.conv))
    return keys


def _npz_shape(torch_shape):
    """Shape the npz stores for a torch parameter shape (OIHW -> HWIO)."""
    if len(torch_shape) == 4:
        out_ch, in_ch, kh, kw = torch_shape
        return (kh, kw, in_ch, out_ch)
    return tuple(torch_shape)


def _to_torch_layout(array, torch_shape):
    """The npz array in torch layout, or None when its shape does not fit."""
    array = np.asarray(array)
    if len(torch_shape) == 4:
        return array.transpose(3, 2, 0, 1) if array.shape == _npz_shape(torch_shape) else None
    # GroupNorm / bias vectors are sometimes stored with extra singleton dims.
    if array.size == int(np.prod(torch_shape)) and sum(d != 1 for d in array.shape) <= 1:
        return array.reshape(torch_shape)
    return None


def _npz_arrays(model, include_head):
    parameters = dict(model.named_parameters())
    arrays = {}
    for torch_name, npz_key in npz_key_map(model).items():
        if not include_head and torch_name in _HEAD_CONV_PARAMS:
            continue
        value = parameters[torch_name].detach().to("cpu", torch.float32).numpy()
        arrays[npz_key] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value  # OIHW -> HWIO
    return arrays


def _load_npz(model, source, load_head):
    """Copy an official BiT .npz (path or mapping name -> array) into `model` in place.

    All arrays are checked before any is copied, so a failed load leaves the model as it was.
    """
    if isinstance(source, (str, PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"BiT npz file not found: {path}")
        with np.load(path, allow_pickle=False) as npz:
            _copy_npz_arrays(model, npz, f"npz file '{path}'", load_head)
    else:
        _copy_npz_arrays(model, source, "the given npz mapping", load_head)


def _listed(items, count=5):
    return ", ".join(items[:count]) + (f" and {len(items) - count} more" if len(items) > count else "")


def _copy_npz_arrays(model, source, described, load_head):
    parameters = dict(model.named_parameters())
    arrays, missing, misshaped = {}, [], []
    for torch_name, npz_key in npz_key_map(model).items():
        if not load_head and torch_name in _HEAD_CONV_PARAMS:
            continue
        if npz_key not in source:
            missing.append(npz_key)
            continue
        stored = np.asarray(source[npz_key])
        target_shape = tuple(parameters[torch_name].shape)
        converted = _to_torch_layout(stored, target_shape)
        if converted is None:
            misshaped.append(f"{npz_key}: stored {tuple(stored.shape)}, "
                             f"expected {_npz_shape(target_shape)}")
        else:
            arrays[torch_name] = converted

    if missing or misshaped:
        problems = []
        if missing and not arrays and not misshaped:
            problems.append(f"it holds none of the {len(missing)} BiT arrays (not a BiT .npz?), e.g. {missing[0]}")
        elif missing:
            problems.append(f"{len(missing)} keys missing: {_listed(missing)}")
        if misshaped:
            problems.append(f"{len(misshaped)} of wrong shape: {_listed(misshaped)}")
        hint = "; pass load_head=False to keep this model's head" if load_head else ""
        raise ValueError(f"cannot load BiT weights from {described} into model {model.model_name!r} "
                         f"(does the model name match the file?{hint}): " + "; ".join(problems))

    with torch.no_grad():
        for torch_name, array in arrays.items():
            parameters[torch_name].copy_(torch.from_numpy(np.ascontiguousarray(array)))


# -- torch checkpoints ---------------------------------------------------------------------
def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | PathLike) -> nn.Module:
    """Strictly load a state dict (a 'module.' prefix from DataParallel/DDP is removed).

    The head is never dropped: a head of another size is an error naming both sizes and
    `source` (the file it came from)."""
    prefix = "module."
    state_dict = {(key[len(prefix):] if key.startswith(prefix) else key): value
                  for key, value in state_dict.items()}
    stored_head = state_dict.get("head.conv.weight")
    if stored_head is not None and stored_head.shape[0] != model.head_size:
        raise ValueError(f"checkpoint {source} has a head of {stored_head.shape[0]} classes, "
                         f"but a head of {model.head_size} classes was requested "
                         f"(check --head_size / the checkpoint)")
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(f"checkpoint {source} does not match model {model.model_name!r} (pass the --model it "
                         f"was trained with): {len(missing)} weights missing ({_listed(missing)}), "
                         f"{len(unexpected)} unexpected ({_listed(unexpected)})")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # same names, other shapes: another width
        raise ValueError(f"checkpoint {source} does not match model {model.model_name!r} (pass the --model it "
                         f"was trained with): " + " ".join(str(error).split())[:500]) from error
    return model
