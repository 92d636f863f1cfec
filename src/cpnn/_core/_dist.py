"""torch.distributed, as cpnn uses it: join the process group torchrun set up, rank 0 writes, sums across ranks."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started by torchrun (or SLURM through it) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> str:
    """Join the process group when launched with several processes; returns this process's device.

    The backend is NCCL on CUDA and gloo on the CPU; each process takes the GPU of its local rank.
    """
    if not launched():
        return device
    cuda = str(device).startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def world() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """The rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op alone)."""
    if world() > 1:
        dist.barrier()


def sum_all(values: list[float]) -> list[float]:
    """Element-wise sums of ``values`` over every process."""
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order."""
    if world() == 1:
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out
