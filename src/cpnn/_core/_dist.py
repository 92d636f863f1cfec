"""torch.distributed, as cpnn uses it: join the process group torchrun set up, rank 0 writes, sums across ranks."""

from __future__ import annotations

import os
import threading
from typing import Any

import torch
import torch.distributed as dist

from .._errors import CpnnError


def launched() -> bool:
    """Whether this process was started by torchrun (or SLURM through it) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str, *, timeout_s: float = 600.0) -> str:
    """Join the process group when launched with several processes; returns this process's device.

    The backend is NCCL on CUDA and gloo on the CPU; each process takes the GPU of its local rank.
    Waits at most ``timeout_s`` for every process to join (torch's own default is 30 minutes, in
    silence), saying how many it waits for and where, and fails with a message naming the
    rendezvous.
    """
    if not launched():
        return device
    cuda = str(device).startswith("cuda")
    if not dist.is_initialized():
        from datetime import timedelta

        from scanpy import logging as logg

        n = os.environ.get("WORLD_SIZE", "?")
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        logg.info(
            f"joining the process group at {where} as rank {os.environ.get('RANK', '?')}: waiting up to "
            f"{timeout_s:g} s for all {n} processes (cp.settings.dist_timeout_s)"
        )
        done = threading.Event()

        def remind() -> None:  # said at the default verbosity, so a rank waiting for a missing peer is not silent
            waited = 0.0
            for pause in (min(10.0, timeout_s / 2), *([60.0] * int(timeout_s // 60 + 1))):
                if done.wait(pause):
                    return
                waited += pause
                logg.warning(
                    f"rank {os.environ.get('RANK', '?')} has waited {waited:.0f} s of {timeout_s:g} s for the other "
                    f"processes of WORLD_SIZE={n} at {where}; start them (torchrun --nproc-per-node {n}) or unset "
                    "WORLD_SIZE to run alone"
                )

        threading.Thread(target=remind, daemon=True).start()
        try:
            dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=float(timeout_s)))
        except Exception as err:  # torch raises DistStoreError, RuntimeError or TimeoutError here
            raise CpnnError(
                f"The process group at {where} did not assemble within {timeout_s:g} s: WORLD_SIZE={n} processes "
                f"were expected ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Start every "
                "process (e.g. torchrun --nproc-per-node N), raise cp.settings.dist_timeout_s, or unset WORLD_SIZE "
                "to run in one process."
            ) from err
        finally:
            done.set()
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
