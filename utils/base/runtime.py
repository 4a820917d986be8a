"""Small run-time switches shared by the three CLIs: autocast, seeding."""
import contextlib
import random

import numpy as np
import torch


def autocast(device, amp):
    """bf16 autocast when `amp` is 'bf16'; GroupNorm and weight standardisation stay float32
    (autocast runs group_norm in float32, StdConv2d standardises in float32)."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if amp in (None, "none", "fp32"):
        return contextlib.nullcontext()
    raise ValueError(f"--amp must be 'bf16' or 'none', got {amp!r}")


def default_amp(device):
    """bf16 on GPUs that support it; fp32 on the CPU. There bf16 is opt-in (--amp bf16): 1.3-1.6x
    faster on CPUs with native bf16 (AVX512-BF16, AMX), slow where it is emulated
    (docs/PERFORMANCE.md)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "none"


# mixed_seed's default multiplier: a prime above any step or image index a run reaches
SEED_STRIDE = 1_000_003


def mixed_seed(seed: int, counter: int, stride: int = SEED_STRIDE) -> int:
    """The generator seed of one draw of a run: `seed` mixed with a counter (a step, an epoch, an
    image index), so that the draw depends on nothing else (not on earlier draws) and a resumed run
    or any number of processes repeat it. Distinct (seed, counter) pairs give distinct seeds while
    0 <= counter < stride."""
    return seed * stride + counter


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
