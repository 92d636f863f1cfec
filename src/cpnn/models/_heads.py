"""The CPNN module (composition head x cell-type prototypes) and the direct regression baseline."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._losses import gene_softmax_mse, nb_log_prob


def _mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.GELU(), nn.Dropout(dropout)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class _Standardise(nn.Module):
    """Fixed z-scoring of the input features with training statistics."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, z: torch.Tensor) -> None:
        self.mean.copy_(z.mean(0))
        self.std.copy_(z.std(0).clamp_min(1e-6))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std


class CPNNHead(nn.Module):
    """Composition weights over K cell types times learnable prototypes, with per-gene correction.

    ``w = softmax(MLP(z))``; ``e = w @ exp(P)``; ``y = exp(alpha) * e + exp(beta)``; the prediction
    is ``y`` renormalised over genes (times the library size for counts). Loss: NB on counts with a
    learnable per-gene inverse dispersion, plus ``proto_reg`` x MSE between gene-softmaxed learned
    and initial log-prototypes, plus ``comp_reg`` x MSE to a reference composition when given.

    Parameters
    ----------
    in_dim
        Embedding dimension.
    prototypes
        K x G initial prototypes (non-negative).
    mode
        ``"learn"`` (initialised from ``prototypes``), ``"freeze"`` (fixed), ``"random"`` (learned
        from a random start: the paper's "from scratch" ablation).
    correction
        Learn the per-gene ``alpha``/``beta`` modality correction.
    efficiency
        Per-gene detection efficiency initialising ``exp(alpha)`` (1 when unknown).
    """

    kind = "cpnn"

    def __init__(
        self,
        in_dim: int,
        prototypes: np.ndarray,
        *,
        mode: str = "learn",
        correction: bool = True,
        efficiency: np.ndarray | None = None,
        hidden: tuple[int, ...] = (1024, 512),
        dropout: float = 0.0,
        proto_reg: float = 1e3,
        comp_reg: float = 1e3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        k, g = prototypes.shape
        self.standardise = _Standardise(in_dim)
        self.mlp = _mlp(in_dim, k, hidden, dropout)
        log_p0 = torch.log(torch.as_tensor(prototypes, dtype=torch.float32).clamp_min(1e-8))
        self.register_buffer("log_p0", log_p0.clone())
        if mode == "random":
            gen = torch.Generator().manual_seed(seed)
            start = log_p0.mean() + log_p0.std() * torch.randn(k, g, generator=gen)
        else:
            start = log_p0.clone()
        self.log_prototypes = nn.Parameter(start, requires_grad=mode != "freeze")
        eff = torch.ones(g) if efficiency is None else torch.as_tensor(efficiency, dtype=torch.float32)
        self.alpha = nn.Parameter(torch.log(eff.clamp_min(1e-8)), requires_grad=correction)
        self.beta = nn.Parameter(torch.full((g,), float(np.log(1e-10))), requires_grad=correction)
        self.log_theta = nn.Parameter(torch.full((g,), 2.0))
        self.mode, self.correction = mode, correction
        self.proto_reg = proto_reg if mode == "learn" else 0.0
        self.comp_reg = comp_reg

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Composition weights (N x K) and predicted gene proportions (N x G)."""
        w = torch.softmax(self.mlp(self.standardise(z)).float(), dim=-1)
        e = w @ torch.exp(self.log_prototypes)
        y = torch.exp(self.alpha) * e + torch.exp(self.beta) if self.correction else e
        return {"weights": w, "proportions": y / y.sum(-1, keepdim=True)}

    def loss(
        self,
        out: dict[str, torch.Tensor],
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean NB negative log-likelihood per spot, plus the regularisers."""
        mu = out["proportions"] * library[:, None]
        nll = -nb_log_prob(counts, mu, torch.exp(self.log_theta)).sum(-1).mean()
        if self.proto_reg:
            nll = nll + self.proto_reg * gene_softmax_mse(self.log_prototypes, self.log_p0)
        if composition is not None and self.comp_reg:
            nll = nll + self.comp_reg * torch.mean((out["weights"] - composition) ** 2)
        return nll


class DirectHead(nn.Module):
    """Baseline: the same MLP straight to the genes, trained with MSE on log-normalised expression.

    The output is log1p of counts per 10,000 over the panel; ``forward`` returns the implied
    gene proportions so that predictions are comparable with :class:`CPNNHead`.
    """

    kind = "direct"

    def __init__(
        self, in_dim: int, n_genes: int, *, hidden: tuple[int, ...] = (1024, 512), dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.standardise = _Standardise(in_dim)
        self.mlp = _mlp(in_dim, n_genes, hidden, dropout)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted log-normalised expression and gene proportions (N x G)."""
        log_norm = self.mlp(self.standardise(z)).float()
        expr = torch.expm1(log_norm.clamp(min=0.0, max=20.0))
        return {"log_norm": log_norm, "proportions": expr / expr.sum(-1, keepdim=True).clamp_min(1e-12)}

    def loss(
        self,
        out: dict[str, torch.Tensor],
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MSE to log1p(counts / library * 1e4)."""
        target = torch.log1p(counts / library.clamp_min(1.0)[:, None] * 1e4)
        return torch.mean((out["log_norm"] - target) ** 2)
