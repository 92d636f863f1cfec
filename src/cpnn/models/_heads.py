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
    residual
        Strength of a per-gene log-scale residual ``r`` from the same features: ``y * exp(r)``,
        with ``sum_g r_g^2 / residual`` added to the loss; 0 switches it off (the paper's model).
    loss
        ``"nb"`` (the paper) or ``"mse"`` on log1p counts per 10,000.
    n_samples
        Number of training samples (sections) with their own per-gene log-scale offset in the
        loss (L2-penalised; 0: none). Predictions never use it: new samples get no offset.
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
        residual: float = 0.0,
        loss: str = "nb",
        n_samples: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        k, g = prototypes.shape
        self.standardise = _Standardise(in_dim)
        self.mlp = _mlp(in_dim, k, hidden, dropout)
        self.residual = float(residual)
        if self.residual > 0:
            # a per-gene log-scale residual from the same features, starting at 0 (the paper's model)
            self.residual_mlp = _mlp(in_dim, g, (hidden[-1],) if hidden else (), dropout)
            nn.init.zeros_(self.residual_mlp[-1].weight)
            nn.init.zeros_(self.residual_mlp[-1].bias)
        if loss not in ("nb", "mse"):
            raise ValueError(f"loss={loss!r}; use 'nb' or 'mse'.")
        self.loss_kind = loss
        # per training sample (section) and gene: a log-scale offset used in the loss only, so that
        # the composition network is not bent to fit one sample's technical gene scaling
        self.n_samples = int(n_samples)
        if self.n_samples:
            self.sample_offset = nn.Parameter(torch.zeros(self.n_samples, g))
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
        """Composition weights (N x K), predicted gene proportions and unnormalised expression (N x G).

        With a residual path also ``"residual"`` (N x G, the log-scale residual) and
        ``"composition"`` (the proportions of the composition term alone).
        """
        zs = self.standardise(z)
        w = torch.softmax(self.mlp(zs).float(), dim=-1)
        e = w @ torch.exp(self.log_prototypes)
        y = torch.exp(self.alpha) * e + torch.exp(self.beta) if self.correction else e
        out = {"weights": w}
        if self.residual > 0:
            # bounded so that exp(r) stays finite on inputs far from the training data
            r = self.residual_mlp(zs).float().clamp(-10.0, 10.0)
            out["composition"] = y / y.sum(-1, keepdim=True)
            out["residual"] = r
            y = y * torch.exp(r)
        out["proportions"] = y / y.sum(-1, keepdim=True)
        out["expression"] = y
        return out

    def loss(
        self,
        out: dict[str, torch.Tensor],
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
        sample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean NB negative log-likelihood per spot (or squared error of log1p CP10k), plus the regularisers."""
        props = out["proportions"]
        if sample is not None and self.n_samples:
            seen = (sample >= 0).float()[:, None]
            offset = self.sample_offset[sample.clamp_min(0)] * seen
            props = props * torch.exp(offset)
            props = props / props.sum(-1, keepdim=True)
        if self.loss_kind == "nb":
            mu = props * library[:, None]
            nll = -nb_log_prob(counts, mu, torch.exp(self.log_theta)).sum(-1).mean()
        else:
            target = torch.log1p(counts / library.clamp_min(1.0)[:, None] * 1e4)
            nll = ((torch.log1p(props * 1e4) - target) ** 2).sum(-1).mean()
        if self.residual > 0:
            nll = nll + (out["residual"] ** 2).sum(-1).mean() / self.residual
        if self.n_samples:
            nll = nll + (self.sample_offset**2).sum(-1).mean()
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
        sample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MSE to log1p(counts / library * 1e4)."""
        target = torch.log1p(counts / library.clamp_min(1.0)[:, None] * 1e4)
        return torch.mean((out["log_norm"] - target) ** 2)


class SlideHead(nn.Module):
    """Slide level: a bag of tile embeddings in, one prediction per slide out.

    For :class:`CPNNHead` the slide's expression is the mean over its tiles of the corrected
    expression ``y`` (the paper: no attention, no MIL pooling) and its composition the mean of the
    tile weights; for :class:`DirectHead` the tile embeddings are mean-pooled first (the usual
    mean-pooling baseline). The loss is the wrapped head's.

    Parameters
    ----------
    head
        The per-tile head.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.kind = head.kind

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``x = (z, valid)``: padded embeddings (B, M, D) and the (B, M) mask of real tiles."""
        z, valid = x
        b, m, d = z.shape
        frac = valid.float() / valid.float().sum(1, keepdim=True).clamp_min(1.0)  # mean weights
        if self.kind == "cpnn":
            out = self.head(z.reshape(b * m, d))
            y = torch.einsum("bm,bmg->bg", frac, out["expression"].reshape(b, m, -1))
            w = torch.einsum("bm,bmk->bk", frac, out["weights"].reshape(b, m, -1))
            slide = {"weights": w, "proportions": y / y.sum(-1, keepdim=True), "expression": y}
            if "residual" in out:  # penalise the residual of the real tiles
                slide["residual"] = out["residual"][valid.reshape(-1)]
            return slide
        return self.head(torch.einsum("bm,bmd->bd", frac, z))

    def loss(
        self,
        out: dict[str, torch.Tensor],
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
        sample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The wrapped head's loss on slide-level outputs."""
        return self.head.loss(out, counts, library, composition, sample)
