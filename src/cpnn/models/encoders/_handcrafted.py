"""Fixed hand-crafted colour and texture features: no weights, fast on CPU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..._errors import CpnnError
from ._base import Encoder


class HandcraftedEncoder(Encoder):
    """Fixed colour and texture features per patch: no weights, fast on CPU.

    Per RGB channel and per haematoxylin/eosin optical-density channel: mean, standard
    deviation and 10/50/90 % quantiles; grey-level gradient (Sobel) and Laplacian energy at two
    scales; an 8-bin grey histogram; the fraction of near-white (background) pixels.
    """

    trainable = False
    seeded = False
    # Ruifrok & Johnston H&E stain vectors (optical density)
    _HE = torch.tensor([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105]])

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("he", self._HE / self._HE.norm(dim=1, keepdim=True), persistent=False)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("kx", sobel.view(1, 1, 3, 3), persistent=False)
        self.register_buffer("ky", sobel.t().contiguous().view(1, 1, 3, 3), persistent=False)
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("lap", lap.view(1, 1, 3, 3), persistent=False)
        self.out_dim = 5 * 5 + 2 * 2 * 2 + 8 + 1

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HandcraftedEncoder:
        """The features take no weights; asking for any is an error."""
        if config.get("weights") or config.get("pretrained"):
            raise CpnnError("encoder='handcrafted' has no weights; drop encoder_weights=/pretrained=.")
        return cls()

    @staticmethod
    def _stats(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        q = torch.quantile(flat, torch.tensor([0.1, 0.5, 0.9], device=x.device), dim=2).permute(1, 2, 0)
        return torch.cat([flat.mean(2, keepdim=True), flat.std(2, keepdim=True), q], dim=2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch of patches (N, 3, H, W) in [0, 1]."""
        x = x.float()
        x = F.interpolate(x, size=(64, 64), mode="area") if x.shape[-1] > 64 else x
        od = -torch.log(x.clamp(min=1.0 / 255.0))
        he = torch.einsum("nchw,sc->nshw", od, self.he)
        grey = x.mean(1, keepdim=True)
        feats = [self._stats(x), self._stats(he)]
        for g in (grey, F.avg_pool2d(grey, 2)):
            gx, gy = F.conv2d(g, self.kx), F.conv2d(g, self.ky)
            mag = torch.sqrt(gx**2 + gy**2 + 1e-12)
            lap = F.conv2d(g, self.lap).abs()
            feats += [torch.stack([mag.mean((1, 2, 3)), mag.std((1, 2, 3))], 1)]
            feats += [torch.stack([lap.mean((1, 2, 3)), lap.std((1, 2, 3))], 1)]
        hist = torch.stack(
            [((grey >= lo) & (grey < lo + 0.125)).float().mean((1, 2, 3)) for lo in torch.arange(0, 1, 0.125).tolist()],
            1,
        )
        white = (x.min(1).values > 0.85).float().mean((1, 2)).unsqueeze(1)
        return torch.cat([*feats, hist, white], dim=1)
