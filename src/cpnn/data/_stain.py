"""Stain normalisation of H&E patches: each slide's stain mapped onto one reference (Macenko et al. 2009).

A slide's haematoxylin and eosin colours (its *stain matrix*, two unit vectors in optical density)
and its stain intensities are estimated once, from a thumbnail of its tissue; every patch of that
slide is then unmixed with them and re-coloured with the reference's. The reference is recorded in
the encoder's configuration, so that a model applies at prediction exactly what it was trained on.

The default reference is the one Macenko's method is usually published with (the stain matrix and
99th-percentile intensities of a typical H&E slide, as in torchstain and staintools).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._errors import CpnnError

#: Stain normalisation methods (``encoder_kwargs={"stain": ...}``).
STAIN_METHODS = ("macenko",)
#: The usual Macenko reference: haematoxylin and eosin optical-density unit vectors (R, G, B), and
#: their 99th-percentile concentrations.
REFERENCE_STAIN = {
    "stain_matrix": [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]],
    "max_concentration": [1.9705, 1.0308],
}
#: Optical density below which a pixel is background (glass, fat) and left out of the estimate.
_BACKGROUND_OD = 0.15
#: Percentile of the angle distribution that picks the two stain vectors (robust extremes).
_ANGLE_PERCENTILE = 1.0
#: Longest side, in pixels, of the thumbnail a slide's stain is estimated from.
_THUMBNAIL_PX = 2048


@dataclass(frozen=True)
class Stain:
    """A stain matrix (3 x 2 unit columns: haematoxylin, eosin) and the stains' 99th-percentile concentrations."""

    matrix: np.ndarray
    max_concentration: np.ndarray

    def to_config(self) -> dict:
        return {
            "stain_matrix": np.round(self.matrix, 6).tolist(),
            "max_concentration": np.round(self.max_concentration, 6).tolist(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Stain:
        matrix = np.asarray(config["stain_matrix"], dtype=np.float64)
        conc = np.asarray(config["max_concentration"], dtype=np.float64)
        if matrix.shape != (3, 2) or conc.shape != (2,) or not (np.isfinite(matrix).all() and (conc > 0).all()):
            raise CpnnError(
                "a stain reference needs 'stain_matrix' (3 x 2) and 'max_concentration' (2 positive values)."
            )
        return cls(matrix / np.linalg.norm(matrix, axis=0, keepdims=True), conc)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-log(rgb)`` of RGB in [0, 1] (..., 3), white at 0, clipped at 1/255."""
    return -np.log(np.clip(rgb, 1.0 / 255.0, 1.0))


def estimate_stain(rgb: np.ndarray) -> Stain:
    """Macenko's estimate from pixels ``rgb`` (..., 3) in [0, 1]: the two stain vectors and their intensities.

    Pixels with an optical density below 0.15 in any channel (background) are left out; the stain
    vectors are the robust extremes (1st and 99th percentile of the angle) of the tissue's optical
    densities projected on their first two principal directions.
    """
    od = optical_density(np.asarray(rgb, dtype=np.float64).reshape(-1, 3))
    tissue = od[(od > _BACKGROUND_OD).all(1)]
    if len(tissue) < 100:
        raise CpnnError(
            f"the image has {len(tissue)} stained pixels to estimate its stain from (at least 100 are needed): it "
            "looks blank. Check the image, or leave stain normalisation off for it."
        )
    _, vectors = np.linalg.eigh(np.cov(tissue, rowvar=False))
    plane = vectors[:, 1:3]  # the two largest directions
    plane = plane * np.where(plane[0] < 0, -1.0, 1.0)  # a deterministic sign: positive red
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [_ANGLE_PERCENTILE, 100 - _ANGLE_PERCENTILE])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    # haematoxylin first: the vector that absorbs more red light
    matrix = np.column_stack([v1, v2] if v1[0] > v2[0] else [v2, v1])
    matrix = np.abs(matrix) / np.linalg.norm(matrix, axis=0, keepdims=True)
    conc = np.linalg.lstsq(matrix, tissue.T, rcond=None)[0]
    max_conc = np.percentile(conc, 99, axis=1)
    if not (max_conc > 0).all():
        raise CpnnError("the image's stain could not be estimated (no positive stain concentration); check the image.")
    return Stain(matrix, max_conc)


def thumbnail(array: Any, scale: float = 255.0, max_px: int = _THUMBNAIL_PX) -> np.ndarray:
    """An image (c, y, x; dask or numpy) read every k-th pixel so that its longer side is at most ``max_px``: (y, x, 3) in [0, 1]."""
    h, w = array.shape[-2], array.shape[-1]
    step = max(1, int(np.ceil(max(h, w) / max_px)))
    block = array[:3, ::step, ::step]
    block = np.asarray(block.compute() if hasattr(block, "compute") else block, dtype=np.float64) / scale
    if block.shape[0] == 1:
        block = np.repeat(block, 3, 0)
    return np.moveaxis(np.clip(block, 0.0, 1.0), 0, -1)


def normalise_patches(x: torch.Tensor, source: Stain, reference: Stain) -> torch.Tensor:
    """Patches ``x`` (n, 3, h, w, float in [0, 1]) unmixed with ``source`` and re-coloured with ``reference``.

    Each pixel's stain concentrations (least squares on its optical density) are scaled by the
    ratio of the two slides' 99th-percentile concentrations; white stays white.
    """
    dtype, device = x.dtype, x.device
    od = -torch.log(x.float().clamp(1.0 / 255.0, 1.0))  # n, 3, h, w
    unmix = torch.as_tensor(np.linalg.pinv(source.matrix), dtype=torch.float32, device=device)  # 2 x 3
    ratio = torch.as_tensor(reference.max_concentration / source.max_concentration, dtype=torch.float32, device=device)
    conc = torch.einsum("sc,nchw->nshw", unmix, od).clamp_min(0.0) * ratio[None, :, None, None]
    mix = torch.as_tensor(reference.matrix, dtype=torch.float32, device=device)  # 3 x 2
    return torch.exp(-torch.einsum("cs,nshw->nchw", mix, conc)).clamp(0.0, 1.0).to(dtype)


def stain_config(value: Any) -> dict:
    """The recorded stain settings of ``encoder_kwargs["stain"]``: ``"macenko"`` or a mapping with a reference."""
    if isinstance(value, str):
        value = {"method": value}
    if not isinstance(value, Mapping) or value.get("method") not in STAIN_METHODS:
        raise CpnnError(
            f"encoder_kwargs['stain']={value!r}; use 'macenko', or {{'method': 'macenko', 'stain_matrix': 3 x 2, "
            "'max_concentration': 2 values}} for your own reference."
        )
    reference = Stain.from_config(value if "stain_matrix" in value else REFERENCE_STAIN)
    return {"method": str(value["method"]), **reference.to_config()}
