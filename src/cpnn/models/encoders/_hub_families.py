"""Foundation models that are not timm models: CONCH (its own package) and Phikon (transformers)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..._errors import CpnnError
from ._base import Encoder
from ._presets import PRESETS
from ._timm import hub_error


class ConchEncoder(Encoder):
    """CONCH (v1, through the authors' ``conch`` package) or CONCH v1.5 (through TITAN, with ``transformers``).

    The image tower's embedding without the contrastive projection (v1: 512-d; v1.5: 768-d), at 448 px.
    """

    def __init__(self, name: str, *, weights: str | Path | None = None) -> None:
        super().__init__()
        preset = PRESETS[name]
        self.out_dim, self.input_px = preset.dim, preset.input_px
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)
        self.v1 = name == "conch"
        try:
            if self.v1:
                from conch.open_clip_custom import create_model_from_pretrained
            else:
                from transformers import AutoModel
        except ImportError as err:
            package = (
                "the CONCH package: pip install git+https://github.com/Mahmoodlab/CONCH.git"
                if self.v1
                else "transformers (pip install transformers) for TITAN's CONCH v1.5"
            )
            raise CpnnError(f"encoder={name!r} needs {package}.") from err
        try:
            if self.v1:
                source = {"checkpoint_path": str(weights)} if weights is not None else {}
                self.model, _ = create_model_from_pretrained(
                    preset.architecture, preset.hub if weights is None else str(weights), **source
                )
            else:
                titan = AutoModel.from_pretrained(str(weights) if weights else preset.hub, trust_remote_code=True)
                self.model, _ = titan.return_conch()
        except Exception as err:  # download, authentication, offline
            raise hub_error(name, preset.hub, preset.card, err) from err

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ConchEncoder:
        """CONCH ``config["encoder"]`` with the configured local weights, else the hub's."""
        return cls(config["encoder"], weights=config.get("weights") or None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of patches."""
        x = (x - self.mean) / self.std
        if self.v1:
            return self.model.encode_image(x, proj_contrast=False, normalize=False)
        return self.model(x)


class TransformersEncoder(Encoder):
    """Phikon / Phikon-v2 through ``transformers``: the class token of the last hidden state."""

    def __init__(self, name: str, *, weights: str | Path | None = None) -> None:
        super().__init__()
        preset = PRESETS[name]
        self.out_dim, self.input_px = preset.dim, preset.input_px
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)
        try:
            from transformers import AutoModel
        except ImportError as err:
            raise CpnnError(f"encoder={name!r} needs transformers: pip install transformers.") from err
        try:
            self.model = AutoModel.from_pretrained(str(weights) if weights else preset.hub)
        except Exception as err:
            raise hub_error(name, preset.hub, preset.card, err) from err

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TransformersEncoder:
        """The model ``config["encoder"]`` from a local folder (``weights``) or the hub."""
        return cls(config["encoder"], weights=config.get("weights") or None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of patches."""
        return self.model(pixel_values=(x - self.mean) / self.std).last_hidden_state[:, 0]
