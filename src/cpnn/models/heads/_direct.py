"""The direct baseline: the same MLP straight to the genes, trained with MSE on log-normalised expression."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..._core import lognorm_torch
from ._base import Head, MLPOptions, Standardise, mlp, xavier_init


class LogNormHead(Head):
    """Heads that predict log1p CP10k of the panel, trained with squared error on it."""

    @staticmethod
    def outputs(log_norm: torch.Tensor) -> dict[str, torch.Tensor]:
        """The predicted log-normalised expression and the gene proportions it implies (negatives count as 0)."""
        expr = torch.expm1(log_norm.clamp(min=0.0, max=20.0))
        return {"log_norm": log_norm, "proportions": expr / expr.sum(-1, keepdim=True).clamp_min(1e-12)}

    def loss(
        self,
        out: dict[str, torch.Tensor],
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
        sample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MSE to log1p(counts / library * 1e4)."""
        return torch.mean((out["log_norm"] - lognorm_torch(counts, library)) ** 2)


class DirectHead(LogNormHead):
    """Baseline: the same MLP straight to the genes, trained with MSE on log-normalised expression.

    The output is log1p of counts per 10,000 over the panel; ``forward`` returns the implied
    gene proportions so that predictions are comparable with :class:`CPNNHead`. At slide level
    the tile embeddings are mean-pooled first (the usual mean-pooling baseline).

    Parameters
    ----------
    in_dim
        Embedding dimension.
    n_genes
        Panel size.
    hidden
        Hidden layer sizes of the MLP (the paper: 1024, 512).
    dropout
        Dropout rate between the MLP's layers, in [0, 1).
    init
        ``"xavier"`` (xavier-normal weights, as the authors' code) or ``"torch"`` (PyTorch's default).
    """

    Options = MLPOptions

    def __init__(
        self,
        in_dim: int,
        n_genes: int,
        *,
        hidden: tuple[int, ...] = (1024, 512),
        dropout: float = 0.0,
        init: str = "torch",
    ) -> None:
        super().__init__()
        self.standardise = Standardise(in_dim)
        self.mlp = mlp(in_dim, n_genes, hidden, dropout)
        if init == "xavier":
            xavier_init(self.mlp)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], in_dim: int, prototypes: np.ndarray | None) -> DirectHead:
        """The head of a fit's configuration (prototypes are not used)."""
        return cls(
            in_dim,
            len(config["genes"]),
            hidden=tuple(config["hidden"]),
            dropout=config["dropout"],
            init=config.get("init", "torch"),
        )

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted log-normalised expression and gene proportions (N x G)."""
        return self.outputs(self.mlp(self.standardise(z)).float())
