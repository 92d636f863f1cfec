"""The trained model object: encoder, head, gene panel, cell types; saved as one file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._errors import CpnnError
from ..models import CPNNHead, DirectHead, SlideHead
from ..pp._embed import build_encoder
from ._train import save_atomic

FORMAT = "cpnn-model"
FORMAT_VERSION = 1


def build_head(config: dict, in_dim: int, prototypes: np.ndarray | None) -> nn.Module:
    """Create the head described by ``config``."""
    hidden = tuple(config["hidden"])
    if config.get("level", "spot") == "slide":
        return SlideHead(build_head({**config, "level": "spot"}, in_dim, prototypes))
    if config["head"] == "cpnn":
        if prototypes is None:
            prototypes = np.ones((len(config["cell_types"]), len(config["genes"])), np.float32)
        return CPNNHead(
            in_dim,
            prototypes,
            mode=config["prototypes"],
            correction=config["correction"],
            hidden=hidden,
            dropout=config["dropout"],
            proto_reg=config["proto_reg"],
            comp_reg=config["comp_reg"],
            residual=config.get("residual", 0.0),
            loss=config.get("loss", "nb"),
            n_samples=len(config.get("samples") or []),
            seed=config["seed"],
        )
    return DirectHead(in_dim, len(config["genes"]), hidden=hidden, dropout=config["dropout"])


class CPNN:
    """A trained cpnn model, as returned by :func:`cpnn.tl.fit`.

    Holds the encoder, the head (composition network with prototypes, or the direct baseline),
    the gene panel, the cell types and the training history. Use :func:`cpnn.tl.predict` to
    apply it, :meth:`save` / :meth:`load` to keep it.
    """

    def __init__(self, config: dict, encoder: nn.Module, head: nn.Module, history: list[dict] | None = None) -> None:
        self.config = config
        self.encoder = encoder
        self.head = head
        self.history = history or []

    @property
    def genes(self) -> list[str]:
        """The predicted gene panel, in model order."""
        return list(self.config["genes"])

    @property
    def cell_types(self) -> list[str]:
        """Cell types of the composition weights (empty for the direct head)."""
        return list(self.config["cell_types"]) if self.config["head"] == "cpnn" else []

    @property
    def groups(self) -> dict[str, str]:
        """Display group of each cell type, when the prototypes are finer than what is shown (else empty)."""
        return dict(self.config.get("groups") or {})

    @property
    def prototypes(self) -> np.ndarray | None:
        """Learned prototypes, genes x K (``None`` for the direct head)."""
        if self.config["head"] != "cpnn":
            return None
        return torch.exp(self.tile_head.log_prototypes.detach().cpu()).numpy().T

    @property
    def level(self) -> str:
        """``"spot"`` (one patch per sample) or ``"slide"`` (a bag of tiles per sample)."""
        return str(self.config.get("level", "spot"))

    @property
    def tile_head(self) -> nn.Module:
        """The head applied to one patch (the slide-level wrapper's inner head)."""
        return self.head.head if isinstance(self.head, SlideHead) else self.head

    def __repr__(self) -> str:
        c = self.config
        k = f", {len(c['cell_types'])} cell types" if c["head"] == "cpnn" else ""
        k += ", slide level" if self.level == "slide" else ""
        return (
            f"CPNN(head={c['head']!r}, encoder={c['encoder_config']['encoder']!r}, "
            f"{len(c['genes'])} genes{k}, finetune={c['finetune']}, epochs trained={len(self.history)})"
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to one file, atomically (weights, config, panel, cell types, history).

        Parameters
        ----------
        path
            Destination file (conventionally ``*.pt``).
        """
        path = Path(path)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": json.dumps(self.config),
            "history": json.dumps(self.history),
            "encoder": {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
        }
        save_atomic(payload, path)

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
        config = json.loads(payload["config"])
        encoder = build_encoder(config["encoder_config"])
        encoder.load_state_dict(payload["encoder"])
        head = build_head(config, config["in_dim"], None)
        head.load_state_dict(payload["head"])
        return cls(config, encoder.eval(), head.eval(), json.loads(payload["history"]))
