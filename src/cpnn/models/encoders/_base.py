"""What every encoder is: RGB patches in [0, 1] in, one embedding per patch out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn


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
    """

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = True
    seeded: ClassVar[bool] = True
    input_um_per_px: ClassVar[float | None] = None
    obs_features: ClassVar[dict[str, tuple[int, float]]] = {}
    coarsest_image_um_per_px: ClassVar[float | None] = None
    out_dim: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Encoder:
        """Build the encoder of an :func:`encoder_config` (name, weights, pretrained, patch geometry)."""
        raise NotImplementedError


class Uint8Input(nn.Module):
    """uint8 patches -> float in [0, 1] in front of an encoder (patches are kept as uint8 while fine-tuning)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        """Embed a batch of uint8 (or float) patches."""
        return self.encoder(x.float() / 255.0 if x.dtype == torch.uint8 else x)
