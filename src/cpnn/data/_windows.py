"""A region's pixels at an encoder's scale, box by box: what an encoder that measures whole regions reads."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ._patches import read_box
from ._regions import RegionImage
from ._stain import Stain, normalise_patches


@dataclass
class RegionReader:
    """One region's spot patches and any box of its image, resampled as the patch pipeline resamples patches.

    A patch is ``patch_native`` image pixels wide around its spot centre (the corner rounded down,
    as :class:`cpnn.data.PatchDataset` cuts it) and ``patch_px`` pixels at the encoder's scale;
    :meth:`read` gives any box of image pixels at that scale (bilinear, antialiased, white outside
    the image), re-coloured like the patches when a stain pair is given, so that a patch read here
    equals the patch the encoder's ``forward`` receives.

    Parameters
    ----------
    region
        The located region (:func:`cpnn.data.region_images`).
    patch_native
        Side of a patch in image pixels.
    patch_px
        Side of a patch at the encoder's scale.
    stain
        ``(source, reference)`` stains to re-colour with, or ``None``.
    """

    region: RegionImage
    patch_native: int
    patch_px: int
    stain: tuple[Stain, Stain] | None = None
    caches: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def scale(self) -> float:
        """Pixels at the encoder's scale per image pixel."""
        return self.patch_px / self.patch_native

    @property
    def corners(self) -> np.ndarray:
        """Top-left corner (x, y) of every spot's patch, in image pixels (spots in the region's order)."""
        return np.floor(self.region.centers_px - self.patch_native / 2.0).astype(np.int64)

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Image pixels ``[y0:y1, x0:x1]`` at the encoder's scale: float64 RGB in [0, 1], (h, w, 3).

        Safe to call from several threads (the chunk cache is read under a lock).
        """
        with self.lock:
            block = read_box(self.region, self.caches, x0, y0, x1, y1)
        x = torch.from_numpy(block)[None]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        size = (max(1, round((y1 - y0) * self.scale)), max(1, round((x1 - x0) * self.scale)))
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
        if self.stain is not None:
            x = normalise_patches(x, *self.stain)
        return x[0].permute(1, 2, 0).numpy().astype(np.float64)
