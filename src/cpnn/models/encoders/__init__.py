"""Encoders: image patches -> embeddings, registered by name (any other name is a timm architecture)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._registry import Registry
from ._base import Encoder, Uint8Input
from ._handcrafted import HandcraftedEncoder
from ._timm import TimmEncoder

#: Encoder families by the name :func:`cpnn.tl.fit` takes as ``encoder=``; other names go to timm.
ENCODERS: Registry[type[Encoder]] = Registry("encoder", "encoder")
register_encoder = ENCODERS.register

HANDCRAFTED = "handcrafted"
register_encoder(HANDCRAFTED)(HandcraftedEncoder)


def encoder_class(name: str) -> type[Encoder]:
    """The class that builds encoder ``name``: a registered family, else a timm architecture."""
    return ENCODERS.get(name) if name in ENCODERS else TimmEncoder


def encoder_config(
    encoder: str, *, weights: str | Path | None, pretrained: bool, seed: int, patch_size_um: float, patch_px: int
) -> dict:
    """The settings that determine an embedding; equal configs give equal embeddings."""
    return {
        "encoder": str(encoder),
        "weights": "" if weights is None else str(Path(weights).resolve()),
        "pretrained": bool(pretrained or weights is not None),
        "seed": int(seed),
        "patch_size_um": float(patch_size_um),
        "patch_px": int(patch_px),
    }


def build_encoder(config: Mapping[str, Any]) -> Encoder:
    """Create the encoder of ``config``; random initialisation is seeded, so it is reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        return encoder_class(config["encoder"]).from_config(config)


def make_encoder(name: str, *, pretrained: bool = False, weights: str | Path | None = None) -> Encoder:
    """Build the encoder ``name`` (unseeded): a registered family or any timm architecture."""
    return encoder_class(name).from_config({"encoder": name, "pretrained": pretrained, "weights": weights})


__all__ = [
    "ENCODERS",
    "HANDCRAFTED",
    "Encoder",
    "HandcraftedEncoder",
    "TimmEncoder",
    "Uint8Input",
    "build_encoder",
    "encoder_class",
    "encoder_config",
    "make_encoder",
    "register_encoder",
]
