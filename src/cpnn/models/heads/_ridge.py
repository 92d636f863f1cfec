"""Ridge regression on the embeddings, in closed form: the probe of the HEST benchmark."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..._core import lognorm_torch
from ._direct import LogNormHead

#: Candidate penalties, chosen on the validation spots (or by leave-one-out without them).
ALPHAS = tuple(10.0**k for k in range(-1, 5))


class _PopulationStandardise(torch.nn.Module):
    """z-scoring with the population standard deviation plus 1e-6 (as the HEST probe scales features)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("std", torch.ones(dim, dtype=torch.float64))

    def fit(self, z: torch.Tensor) -> None:
        z = z.double()
        self.mean.copy_(z.mean(0))
        self.std.copy_(z.std(0, unbiased=False) + 1e-6)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z.double() - self.mean) / self.std


class RidgeHead(LogNormHead):
    """Ridge regression from standardised embeddings to log1p CP10k, solved in closed form.

    The penalty is chosen among ``ALPHAS`` by the squared error on the validation spots, or by
    exact leave-one-out error on the training spots when there are none; the model is fitted on
    the training spots only. At slide level the tile embeddings are mean-pooled first.

    Parameters
    ----------
    in_dim
        Embedding dimension.
    n_genes
        Panel size.
    """

    closed_form = True

    def __init__(self, in_dim: int, n_genes: int) -> None:
        super().__init__()
        self.standardise = _PopulationStandardise(in_dim)
        self.register_buffer("coef", torch.zeros(in_dim, n_genes, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(n_genes, dtype=torch.float64))
        self.register_buffer("alpha", torch.tensor(1.0, dtype=torch.float64))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], in_dim: int, prototypes: np.ndarray | None) -> RidgeHead:
        """The head of a fit's configuration (prototypes are not used)."""
        return cls(in_dim, len(config["genes"]))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted log-normalised expression and gene proportions (N x G)."""
        return self.outputs((self.standardise(z) @ self.coef + self.intercept).float())

    def fit_closed_form(
        self, train: tuple[torch.Tensor, torch.Tensor, torch.Tensor], validation: tuple | None
    ) -> list[dict]:
        """Fit on ``(embeddings, counts, library)`` of the training spots; pick alpha on ``validation``."""
        z, counts, library = train
        self.standardise.fit(z)
        x = self.standardise(z)
        y = lognorm_torch(counts.double(), library.double())
        x_mean, y_mean = x.mean(0), y.mean(0)
        u, s, vt = torch.linalg.svd(x - x_mean, full_matrices=False)
        uty = u.T @ (y - y_mean)

        def solve(alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
            coef = vt.T @ ((s / (s**2 + alpha))[:, None] * uty)
            return coef, y_mean - x_mean @ coef

        scores = {}
        for alpha in ALPHAS:
            if validation is not None:
                zv, cv, lv = validation
                coef, icpt = solve(alpha)
                err = ((self.standardise(zv) @ coef + icpt - lognorm_torch(cv.double(), lv.double())) ** 2).mean()
            else:  # exact leave-one-out residuals of ridge with an intercept
                coef, icpt = solve(alpha)
                hat = (u**2 * (s**2 / (s**2 + alpha))).sum(1) + 1.0 / len(x)
                resid = (y - (x @ coef + icpt)) / (1.0 - hat).clamp_min(1e-12)[:, None]
                err = (resid**2).mean()
            scores[alpha] = float(err)
        best = min(scores, key=lambda a: (scores[a], a))
        coef, icpt = solve(best)
        self.coef.copy_(coef)
        self.intercept.copy_(icpt)
        self.alpha.fill_(best)
        train_loss = float(((x @ coef + icpt - y) ** 2).mean())
        record = {"epoch": 1, "train_loss": train_loss, "alpha": best}
        if validation is not None:
            record["val_loss"] = scores[best]
        return [record]

    def fit_inputs(self, z: torch.Tensor) -> None:
        """Nothing to prepare: :meth:`fit_closed_form` standardises on its own training inputs."""
