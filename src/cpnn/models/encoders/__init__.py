"""Encoders: image patches -> embeddings, registered by name (any other name is a timm architecture)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..._core import sha256_file
from ..._errors import CpnnError
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
    """The settings that determine an embedding; equal configs give equal embeddings.

    A local ``weights`` file is recorded by path and SHA-256, so that a model saved without the
    encoder's weights can re-attach exactly that file.
    """
    path = None if weights is None else Path(weights).resolve()
    if path is not None and not path.is_file():
        raise CpnnError(f"weights={str(weights)!r} is not a file; pass the path of a local checkpoint.")
    return {
        "encoder": str(encoder),
        "weights": "" if path is None else str(path),
        "weights_sha256": "" if path is None else file_digest(path),
        "pretrained": bool(pretrained or weights is not None),
        "seed": int(seed),
        "patch_size_um": float(patch_size_um),
        "patch_px": int(patch_px),
    }


_digests: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a weights file, computed once per process for an unchanged file."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]


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
    "file_digest",
    "make_encoder",
    "register_encoder",
]
