"""Image encoders: any timm architecture, or fixed hand-crafted colour/texture features."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import CpnnError

HANDCRAFTED = "handcrafted"


class TimmEncoder(nn.Module):
    """A timm backbone with its input normalisation; input float RGB in [0, 1], NCHW."""

    def __init__(self, name: str, *, pretrained: bool = False, weights: str | Path | None = None) -> None:
        super().__init__()
        import timm

        kwargs: dict = {"num_classes": 0}
        if weights is not None:
            if not Path(weights).is_file():
                raise CpnnError(f"weights={str(weights)!r} is not a file; pass the path of a local checkpoint.")
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
            pretrained = True
        try:
            self.backbone = timm.create_model(name, pretrained=pretrained, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise CpnnError(f"encoder={name!r} is not a timm architecture (see timm.list_models()).") from e
            raise
        cfg = timm.data.resolve_data_config({}, model=self.backbone)
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.out_dim = int(self.backbone.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of patches."""
        return self.backbone((x - self.mean) / self.std)


class HandcraftedEncoder(nn.Module):
    """Fixed colour and texture features per patch: no weights, fast on CPU.

    Per RGB channel and per haematoxylin/eosin optical-density channel: mean, standard
    deviation and 10/50/90 % quantiles; grey-level gradient (Sobel) and Laplacian energy at two
    scales; an 8-bin grey histogram; the fraction of near-white (background) pixels.
    """

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


def make_encoder(name: str, *, pretrained: bool = False, weights: str | Path | None = None) -> nn.Module:
    """Build the encoder ``name``: ``"handcrafted"`` or any timm architecture."""
    if name == HANDCRAFTED:
        if weights is not None or pretrained:
            raise CpnnError("encoder='handcrafted' has no weights; drop weights=/pretrained=.")
        return HandcraftedEncoder()
    return TimmEncoder(name, pretrained=pretrained, weights=weights)
