"""The CPNN head: composition weights over K cell types times learnable prototypes, with per-gene correction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..._core import PROTOTYPES, lognorm_torch, option
from .._losses import gene_softmax_mse, nb_log_prob
from ._base import Head, MLPOptions, Standardise, mlp, sum_parts, xavier_init


@dataclass(frozen=True)
class CPNNOptions(MLPOptions):
    """Options of the cpnn head: its prototypes, its losses, and the composition targets it learns from."""

    prototypes: Literal["learn", "freeze", "random"] = option(
        "learn", "``'learn'`` (initialised from the atlas), ``'freeze'`` or ``'random'`` (from scratch)."
    )
    correction: bool = option(True, "Learn the per-gene modality correction ``exp(alpha) * e + exp(beta)``.")
    prototypes_key: str = option(PROTOTYPES, "``varm`` key of the prototypes.")
    composition_key: str | None = option(
        None,
        "``obsm`` key of reference compositions of the training spots (cell types as columns, in the units of "
        "cp.pp.deconvolve's) to regularise the weights towards; only training rows are read.",
    )
    unexplained: Literal["flat", "learned"] | None = option(
        None,
        "Add an *unexplained* component (flat profile over the panel, cells of median RNA content): "
        "``'flat'`` keeps its profile, ``'learned'`` learns it; targets then need an ``'unexplained'`` column.",
    )
    proto_reg: float = option(1e3, "Weight of the regulariser keeping learned prototypes near the atlas.", low=0.0)
    comp_reg: float = option(
        1e4, "Weight of the composition loss (paper 1e3; 1e4 for the squared-error loss on log-scale genes).", low=0.0
    )
    residual: float = option(
        0.0,
        "Strength of a per-gene log-scale residual ``y * exp(r)`` (penalty ``sum r^2 / residual``); 0: the paper's.",
        low=0.0,
    )
    loss: Literal["nb", "mse"] = option(
        "mse", "``'nb'``: negative binomial on counts (the paper); ``'mse'``: squared error on log1p CP10k."
    )
    sample_key: str | None = option(
        None, "``obs`` column naming each spot's sample: each training sample gets its own per-gene scaling."
    )
    alpha_init: Literal["scaling", "one"] = option(
        "one",
        "``'scaling'``: initialise ``alpha`` at the deconvolution's per-gene scaling (the paper's code); "
        "``'one'``: at log 1.",
    )
    targets: Literal["deconvolve", "given"] = option(
        "deconvolve",
        "``'deconvolve'``: without ``composition_key``, supervise the composition with a deconvolution of the "
        "training spots (written to ``obsm[key_added + '_targets']``); ``'given'``: only ``composition_key``'s.",
    )


class CPNNHead(Head):
    """Composition weights over K cell types times learnable prototypes, with per-gene correction.

    ``w = softmax(MLP(z))``; ``e = w @ exp(P)``; ``y = exp(alpha) * e + exp(beta)``; the prediction
    is ``y`` renormalised over genes (times the library size for counts). Loss: NB on counts with a
    learnable per-gene inverse dispersion, plus ``proto_reg`` x MSE between gene-softmaxed learned
    and initial log-prototypes, plus ``comp_reg`` x MSE to a reference composition when given.
    At slide level the slide's expression is the mean over its tiles of ``y`` (the paper: no
    attention, no MIL pooling) and its composition the mean of the tile weights.

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
    hidden
        Hidden layer sizes of the MLP (the paper: 1024, 512).
    dropout
        Dropout rate between the MLP's layers, in [0, 1).
    proto_reg
        Weight of the regulariser keeping the learned prototypes near the initial ones.
    comp_reg
        Weight of the composition loss towards a reference composition.
    residual
        Strength of a per-gene log-scale residual ``r`` from the same features: ``y * exp(r)``,
        with ``sum_g r_g^2 / residual`` added to the loss; 0 switches it off (the paper's model).
    loss
        ``"nb"`` (the paper) or ``"mse"`` on log1p counts per 10,000.
    n_samples
        Number of training samples (sections) with their own per-gene log-scale offset in the
        loss (L2-penalised; 0: none). Predictions never use it: new samples get no offset.
    seed
        Seed of the random prototypes of ``mode="random"``.
    init
        ``"xavier"``: xavier-normal MLP weights and log-dispersion drawn from N(0, 1) (the authors'
        code); ``"torch"``: PyTorch's default layers and log-dispersion 2.
    unexplained
        The last row of ``prototypes`` is the unexplained component's profile (not a cell type):
        ``"flat"`` holds it at its initial value whatever ``mode``, ``"learned"`` treats it as the
        other prototypes; ``None``: every row is a cell type.
    """

    Options = CPNNOptions
    composition = True
    per_tile = True
    loss_parts = ("data", "residual", "sample_offset", "prototypes", "composition")  # summed in this order

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
        init: str = "torch",
        unexplained: str | None = None,
    ) -> None:
        super().__init__()
        k, g = prototypes.shape
        self.standardise = Standardise(in_dim)
        self.mlp = mlp(in_dim, k, hidden, dropout)
        self.residual = float(residual)
        if self.residual > 0:
            # a per-gene log-scale residual from the same features, starting at 0 (the paper's model)
            self.residual_mlp = mlp(in_dim, g, (hidden[-1],) if hidden else (), dropout)
            nn.init.zeros_(self.residual_mlp[-1].weight)
            nn.init.zeros_(self.residual_mlp[-1].bias)
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
        self.log_theta = nn.Parameter(torch.randn(g) if init == "xavier" else torch.full((g,), 2.0))
        if init == "xavier":
            xavier_init(self.mlp)
        self.mode, self.correction = mode, correction
        self.unexplained = unexplained
        self.proto_reg = proto_reg if mode == "learn" else 0.0
        self.comp_reg = comp_reg

    @classmethod
    def from_config(cls, config: Mapping[str, Any], in_dim: int, prototypes: np.ndarray | None) -> CPNNHead:
        """The head of a fit's configuration; without ``prototypes`` (loading) a placeholder of the right shape."""
        if prototypes is None:
            prototypes = np.ones((len(config["cell_types"]), len(config["genes"])), np.float32)
        return cls(
            in_dim,
            prototypes,
            mode=config["prototypes"],
            correction=config["correction"],
            hidden=tuple(config["hidden"]),
            dropout=config["dropout"],
            proto_reg=config["proto_reg"],
            comp_reg=config["comp_reg"],
            residual=config["residual"],
            loss=config["loss"],
            n_samples=len(config["samples"] or ()),
            seed=config["seed"],
            init=config.get("init", "torch"),
            unexplained=config.get("unexplained"),
        )

    def set_gene_scaling(self, scaling: np.ndarray) -> None:
        """Initialise ``alpha`` at the log of a per-gene technical scaling (G values, positive)."""
        s = torch.as_tensor(np.asarray(scaling, dtype=np.float32)).clamp_min(1e-8)
        if s.shape != self.alpha.shape:
            raise ValueError(f"gene scaling has {tuple(s.shape)} values for {self.alpha.numel()} genes")
        with torch.no_grad():
            self.alpha.copy_(torch.log(s))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Composition weights (N x K), predicted gene proportions and unnormalised expression (N x G).

        With a residual path also ``"residual"`` (N x G, the log-scale residual) and
        ``"composition"`` (the proportions of the composition term alone).
        """
        zs = self.standardise(z)
        w = torch.softmax(self.mlp(zs).float(), dim=-1)
        e = w @ torch.exp(self.effective_log_prototypes())
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

    def pool_outputs(
        self, out: dict[str, torch.Tensor], frac: torch.Tensor, valid: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Mean over tiles of the corrected expression and of the weights; the residual of the real tiles."""
        b, m = frac.shape
        y = torch.einsum("bm,bmg->bg", frac, out["expression"].reshape(b, m, -1))
        w = torch.einsum("bm,bmk->bk", frac, out["weights"].reshape(b, m, -1))
        slide = {"weights": w, "proportions": y / y.sum(-1, keepdim=True), "expression": y}
        if "residual" in out:  # penalise the residual of the real tiles
            slide["residual"] = out["residual"][valid.reshape(-1)]
        return slide

    def _data_term(
        self, out: dict[str, torch.Tensor], counts: torch.Tensor, library: torch.Tensor, sample: torch.Tensor | None
    ) -> torch.Tensor:
        """Mean NB negative log-likelihood per spot (or squared error of log1p CP10k), without regularisers."""
        props = out["proportions"]
        if sample is not None and self.n_samples:
            seen = (sample >= 0).float()[:, None]
            offset = self.sample_offset[sample.clamp_min(0)] * seen
            props = props * torch.exp(offset)
            props = props / props.sum(-1, keepdim=True)
        if self.loss_kind == "nb":
            mu = props * library[:, None]
            return -nb_log_prob(counts, mu, torch.exp(self.log_theta)).sum(-1).mean()
        return ((torch.log1p(props * 1e4) - lognorm_torch(counts, library)) ** 2).sum(-1).mean()

    def loss_terms(
        self,
        out: dict[str, torch.Tensor],
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
        sample: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The data term and each weighted regulariser (a part that is switched off is 0).

        The data term is the mean NB negative log-likelihood per spot (or squared error of log1p CP10k).
        """
        data = self._data_term(out, counts, library, sample)
        zero = data.new_zeros(())
        return {
            "data": data,
            "composition": self.comp_reg * torch.mean((out["weights"] - composition) ** 2)
            if composition is not None and self.comp_reg
            else zero,
            "prototypes": self.proto_reg * gene_softmax_mse(self.effective_log_prototypes(), self.log_p0)
            if self.proto_reg
            else zero,
            "residual": (out["residual"] ** 2).sum(-1).mean() / self.residual if self.residual > 0 else zero,
            "sample_offset": (self.sample_offset**2).sum(-1).mean() if self.n_samples else zero,
        }

    def loss(
        self,
        out: dict[str, torch.Tensor],
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
        sample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean NB negative log-likelihood per spot (or squared error of log1p CP10k), plus the regularisers."""
        return sum_parts(self.loss_terms(out, counts, library, composition, sample), self.loss_parts)

    def criterion(self, out: dict[str, torch.Tensor], counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Validation criterion: the data term alone; for the NB loss the counts rescaled to 10,000 at library 10,000.

        This is the authors' early-stopping criterion: comparable between spots (and slides) of any
        sequencing depth, and blind to the regularisers.
        """
        if self.loss_kind == "nb":
            scaled = counts / library.clamp_min(1e-8)[:, None] * 1e4
            return self._data_term(out, scaled, torch.full_like(library, 1e4), None)
        return self._data_term(out, counts, library, None)

    def effective_log_prototypes(self) -> torch.Tensor:
        """The log-prototypes the head multiplies: the learned ones, a flat unexplained row held at its start."""
        if self.unexplained == "flat":
            return torch.cat([self.log_prototypes[:-1], self.log_p0[-1:]])
        return self.log_prototypes

    def learned_prototypes(self) -> np.ndarray:
        """The learned prototypes, K x G, on the count scale."""
        return torch.exp(self.effective_log_prototypes().detach().cpu()).numpy()
