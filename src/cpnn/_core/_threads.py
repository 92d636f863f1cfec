"""How many CPU threads cpnn's own work uses: what the machine has free, not every core.

torch's default is a thread per core. Alone on a machine that is the fastest (1.1-1.4x over one
thread for head training on 2 cores, docs/performance.md); beside other CPU-bound processes its
threads wait for each other at every parallel region and a fit that takes 7 s alone took 176 s.
:func:`cpu_threads` gives cpnn's work (training, embedding, deconvolution, prediction) the cores
that are idle when it starts, as measured from the kernel's CPU counters over a tenth of a second,
at least one, and gives the caller's torch setting back afterwards. ``cp.settings.n_jobs`` (or
``CPNN_N_JOBS``) fixes the number instead: a positive number, or ``-1`` for every core (torch's
default behaviour).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import torch

#: Seconds over which idle cores are measured (at each public call; nested calls keep the outer choice).
WINDOW_S = 0.1

P = ParamSpec("P")
R = TypeVar("R")

_depth = 0


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) jiffies of all CPUs from ``/proc/stat``, or ``None`` where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return idle, sum(fields[:8])


def idle_cores(window_s: float = WINDOW_S) -> float:
    """Cores idle over the next ``window_s`` seconds (this process sleeps meanwhile), from the kernel's counters.

    Where ``/proc/stat`` is missing (macOS, Windows): cores minus the one-minute load average.
    """
    cores = os.cpu_count() or 1
    before = _cpu_times()
    if before is None:
        try:
            return max(0.0, cores - os.getloadavg()[0])
        except (OSError, AttributeError):
            return float(cores)
    time.sleep(window_s)
    after = _cpu_times()
    total = after[1] - before[1]
    if total <= 0:
        return float(cores)
    return cores * (after[0] - before[0]) / total


def choose_threads(n_jobs: int | None, *, deterministic: bool = False) -> tuple[int, str]:
    """The number of threads for cpnn's CPU work and why: ``n_jobs`` when set, else the idle cores (at least 1).

    Float sums can depend on the number of threads, so under ``deterministic`` an unset
    ``n_jobs`` means every core (a number that does not move with the machine's load).
    """
    cores = usable_cores()
    if n_jobs is None and deterministic:
        return cores, f"every core ({cores}): cp.settings.deterministic fixes the number"
    if n_jobs is not None:
        if n_jobs == -1:
            return cores, f"every core (cp.settings.n_jobs=-1, {cores})"
        return int(n_jobs), f"cp.settings.n_jobs={n_jobs}"
    free = idle_cores()
    n = max(1, min(cores, int(free + 0.5)))
    return n, f"{free:.1f} of {cores} cores idle; cp.settings.n_jobs fixes the number"


@contextmanager
def cpu_threads() -> Iterator[int]:
    """Run cpnn's CPU work with :func:`choose_threads`'s number of torch threads, restoring the caller's afterwards.

    Nested uses keep the outer choice. Yields the number of threads.
    """
    global _depth
    from .._settings import settings

    if _depth:
        _depth += 1
        try:
            yield torch.get_num_threads()
        finally:
            _depth -= 1
        return
    previous = torch.get_num_threads()
    n, why = choose_threads(settings.n_jobs, deterministic=settings.deterministic)
    from scanpy import logging as logg

    logg.info(f"    {n} CPU thread{'s' if n > 1 else ''}: {why}")
    torch.set_num_threads(n)
    _depth += 1
    try:
        yield n
    finally:
        _depth -= 1
        torch.set_num_threads(previous)


def uses_cpu_threads(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` inside :func:`cpu_threads` (for cpnn's public functions that compute on the CPU)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with cpu_threads():
            return func(*args, **kwargs)

    return wrapper
