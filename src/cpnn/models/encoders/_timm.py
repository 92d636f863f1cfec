"""Any timm architecture as an encoder, with its input normalisation and local or hub weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch

from ..._errors import CpnnError
from ._base import Encoder


class TimmEncoder(Encoder):
    """A timm backbone with its input normalisation; input float RGB in [0, 1], NCHW.

    Parameters
    ----------
    name
        A timm architecture (``timm.list_models()``).
    pretrained
        Load timm's pretrained weights (from its hub: networked machines only).
    weights
        A local checkpoint file for the architecture.
    """

    def __init__(self, name: str, *, pretrained: bool = False, weights: str | Path | None = None) -> None:
        super().__init__()
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

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TimmEncoder:
        """The architecture ``config["encoder"]`` with the configured weights."""
        return cls(config["encoder"], pretrained=bool(config.get("pretrained")), weights=config.get("weights") or None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of patches."""
        return self.backbone((x - self.mean) / self.std)
