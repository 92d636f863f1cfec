"""The one autocast policy: bf16 on CUDA, full precision elsewhere."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: str) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes: bfloat16 autocast on CUDA, a no-op on the CPU."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
