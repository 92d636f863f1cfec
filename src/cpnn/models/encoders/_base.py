"""What every encoder is: RGB patches in [0, 1] in, one embedding per patch out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from ...data._windows import RegionReader


class Encoder(nn.Module):
    """The protocol of an image encoder: register a subclass with :func:`cpnn.models.register_encoder`.

    ``forward`` takes float RGB patches in [0, 1], shape (N, 3, px, px), and returns (N, ``out_dim``).

    Attributes
    ----------
    trainable
        Whether the encoder has weights that ``finetune=True`` can train.
    seeded
        Whether an encoder built without pretrained weights depends on the seed (random
        initialisation). When it does not, the seed is left out of the embedding's identity, so an
        embedding made once serves fits with any seed.
    input_um_per_px
        Micrometres per pixel the encoder reads patches at (its default input size then follows
        the patch size), or ``None`` for a fixed input size in pixels.
    obs_features
        Per-spot measurements written to ``obs[f"cpnn_{name}"]`` when spots are embedded
        (``obs[f"{key_added}_{name}"]`` for another embedding key): name -> (feature index,
        factor back to the natural unit).
    coarsest_image_um_per_px
        Coarsest image (micrometres per pixel) the encoder's features mean what they say on;
        embedding from a coarser one warns (patches upsampled from it hold no more detail), or
        ``None`` for no limit.
    feature_version
        Version of the features' definitions for an encoder without weights, recorded in the
        embedding's identity (so that a cache made under older definitions is not read), or ``None``.
    region_dim
        Leading features the encoder measures over whole regions rather than patch by patch (the
        nuclei encoder segments overlapping patches once): when above 0, embedding calls
        :meth:`measure_region` once per region for them and :meth:`patch_part` per batch for the rest.
    region_element
        What :meth:`measure_region` finds (``"nuclei"``): :func:`cpnn.pp.embed` stores it per
        region as the points element ``cpnn_<region_element>_<region>``.
    """

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = True
    seeded: ClassVar[bool] = True
    input_um_per_px: ClassVar[float | None] = None
    obs_features: ClassVar[dict[str, tuple[int, float]]] = {}
    coarsest_image_um_per_px: ClassVar[float | None] = None
    feature_version: ClassVar[int | None] = None
    region_dim: ClassVar[int] = 0
    region_element: ClassVar[str] = ""
    out_dim: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Encoder:
        """Build the encoder of an :func:`encoder_config` (name, weights, pretrained, patch geometry)."""
        raise NotImplementedError

    def measure_region(self, reader: RegionReader) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The first :attr:`region_dim` features of every spot of one region (the region's spot order).

        Returns the features and a table of what the encoder found (columns ``x``, ``y`` in image
        pixels, then measurements), which embedding stores as a SpatialData points element.
        """
        raise NotImplementedError

    def patch_part(self, x: torch.Tensor) -> torch.Tensor:
        """The features after the first :attr:`region_dim` of a batch of patches (all of them by default)."""
        return self(x)


class Uint8Input(nn.Module):
    """uint8 patches -> float in [0, 1] in front of an encoder (patches are kept as uint8 while fine-tuning)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        """Embed a batch of uint8 (or float) patches."""
        return self.encoder(x.float() / 255.0 if x.dtype == torch.uint8 else x)
