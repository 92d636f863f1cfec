"""What every head is: embeddings in, gene proportions (and maybe a composition) out, a loss, slide pooling."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ..._core import Options, option


@dataclass(frozen=True)
class HeadOptions(Options):
    """A head's own options (:attr:`Head.Options`; ``fit(head_kwargs=)``); every head has these."""

    standardise: bool = option(
        False,
        "z-score the input features with the training spots' mean and sd (heads trained by gradient; the paper "
        "feeds raw features).",
    )


@dataclass(frozen=True)
class MLPOptions(HeadOptions):
    """Options of a head with an MLP trained by gradient (direct, and the base of the cpnn head's)."""

    hidden: tuple[int, ...] = option((1024, 512), "Hidden layer sizes of the MLP (the paper: 1024, 512).")
    dropout: float = option(0.0, "Dropout rate between the MLP's layers, in [0, 1).", low=0.0, high=1.0)
    init: Literal["xavier", "torch"] = option(
        "torch",
        "``'xavier'``: xavier-normal MLP weights and log-dispersion ~ N(0, 1), as the authors' code; "
        "``'torch'``: PyTorch's default and log-dispersion 2.",
    )


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Linear layers with GELU and dropout between them (the paper's head: D -> 1024 -> 512 -> out)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.GELU(), nn.Dropout(dropout)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def xavier_init(module: nn.Module) -> None:
    """Xavier-normal weights for every linear layer of ``module`` (biases keep PyTorch's default), as the authors' code."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)


class Standardise(nn.Module):
    """Fixed z-scoring of the input features with training statistics."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, z: torch.Tensor) -> None:
        """Take the mean and standard deviation of ``z`` (rows = samples)."""
        self.mean.copy_(z.mean(0))
        self.std.copy_(z.std(0).clamp_min(1e-6))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std


def sum_parts(terms: dict[str, torch.Tensor], order: tuple[str, ...]) -> torch.Tensor:
    """The loss: its parts added in ``order`` (always the same order, so the same float rounding)."""
    total = terms[order[0]]
    for name in order[1:]:
        total = total + terms[name]
    return total


class Head(nn.Module):
    """The protocol of a head: register a subclass with :func:`cpnn.models.register_head`.

    A head maps embeddings (N x D) to a dict holding at least ``"proportions"`` (N x G, rows sum
    to 1: the predicted share of each panel gene); heads with ``composition = True`` also output
    ``"weights"`` (N x K, the cell-type composition) and are built with the prototypes.

    Attributes
    ----------
    composition
        Whether the head outputs a cell-type composition (and needs prototypes).
    per_tile
        Slide level: whether the head is applied to every tile and its outputs averaged
        (:meth:`pool_outputs`), rather than to the mean of the tile embeddings.
    closed_form
        Whether the head is fitted in one step (:meth:`fit_closed_form`) instead of the gradient loop.
    loss_parts
        Names of the parts of the training loss that :meth:`loss_terms` returns (their sum is
        :meth:`loss`); the training history records each per epoch (``train_<part>``).
    """

    name: ClassVar[str] = ""
    #: the record of the head's own options (``fit(head_kwargs=)``), read by :meth:`from_config`
    Options: ClassVar[type[HeadOptions]] = HeadOptions
    composition: ClassVar[bool] = False
    per_tile: ClassVar[bool] = False
    closed_form: ClassVar[bool] = False
    loss_parts: ClassVar[tuple[str, ...]] = ("data",)

    standardise: Standardise

    @classmethod
    def from_config(cls, config: Mapping[str, Any], in_dim: int, prototypes: np.ndarray | None) -> Head:
        """Build the head for a fit's configuration (``prototypes``: K x G, or ``None`` when loading)."""
        raise NotImplementedError

    def loss(
        self,
        out: dict[str, torch.Tensor],
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
        sample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Training loss of a batch: outputs, raw panel counts, library sizes, optional targets."""
        raise NotImplementedError

    def loss_terms(
        self,
        out: dict[str, torch.Tensor],
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
        sample: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training loss in its named parts (:attr:`loss_parts`, each already weighted; their sum is :meth:`loss`).

        Default: one part, ``"data"``, the head's :meth:`loss`; a head with regularisers overrides
        this and sets :attr:`loss_parts`.
        """
        return {"data": self.loss(out, counts, library, composition, sample)}

    def criterion(self, out: dict[str, torch.Tensor], counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Validation criterion for early stopping (default: the training loss without reference composition)."""
        return self.loss(out, counts, library)

    def fit_inputs(self, z: torch.Tensor) -> None:
        """Prepare for the training inputs ``z`` (rows = what the head sees): standardisation."""
        self.standardise.fit(z)

    def pool(self, z: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Slide level: outputs for padded bags ``z`` (B, M, D) with real tiles marked in ``valid`` (B, M).

        A ``per_tile`` head is applied to every tile and :meth:`pool_outputs` averages its outputs;
        any other head sees the mean embedding of each bag.
        """
        b, m, d = z.shape
        frac = valid.float() / valid.float().sum(1, keepdim=True).clamp_min(1.0)  # mean weights
        if not self.per_tile:
            return self(torch.einsum("bm,bmd->bd", frac, z))
        out = self(z.reshape(b * m, d))
        return self.pool_outputs(out, frac, valid)

    def pool_outputs(
        self, out: dict[str, torch.Tensor], frac: torch.Tensor, valid: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Combine the per-tile outputs (flattened, B*M rows) of ``per_tile`` heads into one per bag."""
        raise NotImplementedError

    def fit_closed_form(
        self, train: tuple[torch.Tensor, torch.Tensor, torch.Tensor], validation: tuple | None
    ) -> list[dict]:
        """Closed-form heads: fit on ``(inputs, counts, library)``; returns the history records."""
        raise NotImplementedError


class SlideHead(nn.Module):
    """Slide level: a bag of tile embeddings in, one prediction per slide out (through :meth:`Head.pool`).

    Parameters
    ----------
    head
        The per-tile head.
    """

    def __init__(self, head: Head) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``x = (z, valid)``: padded embeddings (B, M, D) and the (B, M) mask of real tiles."""
        return self.head.pool(*x)

    @property
    def loss_parts(self) -> tuple[str, ...]:
        """The wrapped head's :attr:`Head.loss_parts`."""
        return self.head.loss_parts

    def loss(self, *args: Any) -> torch.Tensor:
        """The wrapped head's loss on slide-level outputs."""
        return self.head.loss(*args)

    def loss_terms(self, *args: Any) -> dict[str, torch.Tensor]:
        """The wrapped head's loss parts on slide-level outputs."""
        return self.head.loss_terms(*args)

    def criterion(self, *args: Any) -> torch.Tensor:
        """The wrapped head's validation criterion on slide-level outputs."""
        return self.head.criterion(*args)
