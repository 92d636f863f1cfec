"""The one autocast policy: bf16 on CUDA, full precision elsewhere."""

from __future__ import annotations

import contextlib
import hashlib

import torch


def autocast(device: str, *, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes: bfloat16 autocast on CUDA, a no-op on the CPU or when not ``enabled``."""
    if enabled and str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
