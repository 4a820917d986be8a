"""torchrun support: one process per device, NCCL on GPUs, gloo on CPUs; and the run context
(device, rank, world size, precision) that every stage starts with.

Without torchrun's environment every helper degrades to the single-process case, so
the same code path serves both.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.base.runtime import default_amp


@dataclass(frozen=True)
class RunContext:
    """Where this process runs and in which precision, as every stage needs it."""
    device: torch.device
    rank: int
    world_size: int
    amp: str  # 'bf16' or 'none' (utils.base.runtime.autocast)
    is_main: bool  # rank 0: the process that prints and writes the shared files


def start_run(device: str = "auto", amp: str | None = None) -> RunContext:
    """Set up this process (torchrun's process group when launched by it) and its context.
    amp: the precision asked for (--amp), None for the device's default (utils.base.runtime.default_amp)."""
    resolved, rank, world_size = init_distributed(device)
    return RunContext(device=resolved, rank=rank, world_size=world_size, amp=amp or default_amp(resolved),
                      is_main=is_main_process())


def init_distributed(device_arg="auto"):
    """Set up the process group when launched by torchrun; return (device, rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_arg, local_rank if world_size > 1 else None)
    # Zero-initialised heads make tiny gradients; as denormal floats they slow CPU kernels ~10x.
    torch.set_flush_denormal(True)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return device, rank, world_size


def resolve_device(device_arg="auto", local_rank=None):
    """'auto' -> the GPU when there is one, else the CPU; 'cuda' under torchrun -> this rank's GPU."""
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device_arg}: CUDA is not available on this machine; use --device cpu")
        if local_rank is not None and device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def is_main_process():
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(num_items, rank, world_size):
    """Contiguous, non-overlapping shards that cover 0..num_items-1 in order."""
    per_rank = -(-num_items // world_size)
    return range(min(rank * per_rank, num_items), min((rank + 1) * per_rank, num_items))


def gather_in_order(tensor, num_items, world_size):
    """Concatenate the per-rank shards of `shard_indices` back into dataset order."""
    if world_size == 1:
        return tensor
    per_rank = -(-num_items // world_size)
    padded = torch.zeros((per_rank,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat(gathered)[:num_items]
