"""The trained model object: encoder, head, gene panel, cell types; saved as one file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._errors import CpnnError
from ..models import build_encoder
from ..models.heads import HEADS, Head, SlideHead
from ._config import FitConfig
from ._train import save_atomic

FORMAT = "cpnn-model"
FORMAT_VERSION = 1


def build_head(config: FitConfig, in_dim: int, prototypes: np.ndarray | None) -> nn.Module:
    """Create the head described by ``config`` (wrapped for slide level)."""
    head = HEADS.get(config.head).from_config(config, in_dim, prototypes)
    return SlideHead(head) if config.level == "slide" else head


class CPNN:
    """A trained cpnn model, as returned by :func:`cpnn.tl.fit`.

    Holds the encoder, the head (composition network with prototypes, or a baseline), the
    configuration of the fit (gene panel and cell types included) and the training history. Use
    :func:`cpnn.tl.predict` to apply it, :meth:`save` / :meth:`load` to keep it.
    """

    def __init__(
        self, config: FitConfig | dict, encoder: nn.Module, head: nn.Module, history: list[dict] | None = None
    ) -> None:
        self.config = config if isinstance(config, FitConfig) else FitConfig.from_dict(config)
        self.encoder = encoder
        self.head = head
        self.history = history or []

    @property
    def tile_head(self) -> Head:
        """The head applied to one patch (the slide-level wrapper's inner head)."""
        return self.head.head if isinstance(self.head, SlideHead) else self.head

    @property
    def has_composition(self) -> bool:
        """Whether the head outputs a cell-type composition."""
        return bool(self.tile_head.composition)

    @property
    def genes(self) -> list[str]:
        """The predicted gene panel, in model order."""
        return list(self.config.genes)

    @property
    def cell_types(self) -> list[str]:
        """Cell types of the composition weights (empty for heads without a composition)."""
        return list(self.config.cell_types) if self.has_composition else []

    @property
    def groups(self) -> dict[str, str]:
        """Display group of each cell type, when the prototypes are finer than what is shown (else empty)."""
        return dict(self.config.groups or {})

    @property
    def prototypes(self) -> np.ndarray | None:
        """Learned prototypes, genes x K (``None`` for heads without prototypes)."""
        learned = getattr(self.tile_head, "learned_prototypes", None)
        return None if learned is None else learned().T

    @property
    def level(self) -> str:
        """``"spot"`` (one patch per sample) or ``"slide"`` (a bag of tiles per sample)."""
        return self.config.level

    def __repr__(self) -> str:
        c = self.config
        k = f", {len(c.cell_types)} cell types" if self.has_composition else ""
        k += ", slide level" if self.level == "slide" else ""
        return (
            f"CPNN(head={c.head!r}, encoder={c.encoder_config['encoder']!r}, "
            f"{len(c.genes)} genes{k}, finetune={c.finetune}, epochs trained={len(self.history)})"
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to one file, atomically (weights, config, panel, cell types, history).

        Parameters
        ----------
        path
            Destination file (conventionally ``*.pt``).
        """
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": json.dumps(self.config.to_dict()),
            "history": json.dumps(self.history),
            "encoder": {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
        }
        save_atomic(payload, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CPNN:
        """Load a model written by :meth:`save`; no code from the file is executed.

        Parameters
        ----------
        path
            The model file.
        """
        path = Path(path)
        if not path.is_file():
            raise CpnnError(f"path={str(path)!r} is not a file.")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CpnnError(f"{str(path)!r} is not a readable cpnn model file: {e}") from e
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CpnnError(f"{str(path)!r} is not a cpnn model file.")
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise CpnnError(
                f"{str(path)!r} has model format version {version}, this cpnn reads version {FORMAT_VERSION}; "
                "use the cpnn release that wrote it, or retrain."
            )
        config = FitConfig.from_dict(json.loads(payload["config"]))
        encoder = build_encoder(config.encoder_config)
        encoder.load_state_dict(payload["encoder"])
        head = build_head(config, config.in_dim, None)
        head.load_state_dict(payload["head"])
        return cls(config, encoder.eval(), head.eval(), json.loads(payload["history"]))


def model_summary(model: CPNN) -> dict[str, Any]:
    """What a prediction records about the model that made it."""
    return {
        "head": model.config.head,
        "encoder": model.config.encoder_config["encoder"],
        "genes": list(model.genes),
        "cell_types": model.cell_types,
    }
