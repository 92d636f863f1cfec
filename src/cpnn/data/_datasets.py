"""Torch datasets of what the heads train on: spots (embeddings or patches) and slide bags of tiles.

Both are indexed by a *list* of positions and return a whole :class:`Batch`, so that a
:class:`~torch.utils.data.DataLoader` with a batch sampler (any sampler: in order, shuffled,
distributed) fetches one batch per step without per-item collation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import Dataset


@dataclass
class Batch:
    """Inputs, raw panel counts, library sizes, optional reference composition and sample codes."""

    x: Any  # tensor (N, D) or (N, C, H, W); for bags a tuple (z (B, M, D), valid (B, M))
    counts: torch.Tensor
    library: torch.Tensor
    composition: torch.Tensor | None = None
    sample: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.counts)

    def to(self, device: str) -> Batch:
        """The batch on ``device``."""

        def move(v):
            if v is None:
                return None
            if isinstance(v, tuple):
                return tuple(t.to(device) for t in v)
            return v.to(device)

        return replace(self, **{k: move(getattr(self, k)) for k in ("x", "counts", "library", "composition", "sample")})


class SpotDataset(Dataset):
    """One row per spot: an input (embedding or uint8 patch), its panel counts and library size.

    Parameters
    ----------
    x
        Inputs, first dimension = spots.
    counts
        Raw panel counts, one row per item.
    library
        Panel library size of each row.
    composition
        Reference composition (N x K) for the composition regulariser, or ``None``.
    sample
        Code of each spot's sample (N, int; -1 unseen) for a per-sample correction, or ``None``.
    eval_batch_size
        Rows per step when computing validation losses (default: the training batch size, at least 256).
    """

    def __init__(
        self,
        x: torch.Tensor,
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
        sample: torch.Tensor | None = None,
        *,
        eval_batch_size: int | None = None,
    ) -> None:
        self.x, self.counts, self.library = x, counts, library
        self.composition, self.sample = composition, sample
        self.eval_batch_size = eval_batch_size
        #: random generator of the training loop (unused by spots; bags draw tiles with it)
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, idx: Sequence[int] | torch.Tensor) -> Batch:
        idx = torch.as_tensor(idx)
        return Batch(
            self.x[idx],
            self.counts[idx],
            self.library[idx],
            None if self.composition is None else self.composition[idx],
            None if self.sample is None else self.sample[idx],
        )

    def closed_form_data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every spot's input, counts and library size (what a closed-form head fits on)."""
        return self.x, self.counts, self.library

    def standardisation_inputs(self, per_tile: bool) -> torch.Tensor:
        """What a head's input standardisation is fitted on: the spots' inputs."""
        return self.x


class BagDataset(Dataset):
    """Tile embeddings of several slides; each item draws at most ``max_patches`` tiles of a slide.

    With a :attr:`generator` (set by the training loop) each draw is a random subset; without one
    the subset is a fixed one, so validation losses are comparable between epochs. Inputs are
    ``(z, valid)``: padded embeddings (B, M, D) and a (B, M) mask of real tiles.

    Parameters
    ----------
    z
        Per slide, its tile embeddings (tiles x D).
    counts
        Raw panel counts, one row per item.
    library
        Panel library size of each row.
    composition
        Reference composition (rows x K) for the composition loss, or ``None``.
    max_patches
        Most tiles per slide and step (4096 in the paper).
    seed
        Seed of the fixed subsets.
    eval_batch_size
        Slides per step when computing validation losses.
    """

    def __init__(
        self,
        z: list[torch.Tensor],
        counts: torch.Tensor,
        library: torch.Tensor,
        composition: torch.Tensor | None = None,
        *,
        max_patches: int,
        seed: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        self.z, self.counts, self.library, self.composition = z, counts, library, composition
        self.sample = None
        self.max_patches = int(max_patches)
        self.eval_batch_size = eval_batch_size
        self.generator: torch.Generator | None = None
        gen = torch.Generator().manual_seed(seed)
        self._fixed = [torch.randperm(len(t), generator=gen)[: self.max_patches] for t in z]

    def __len__(self) -> int:
        return len(self.z)

    def _take(self, i: int) -> torch.Tensor:
        t = self.z[i]
        if self.generator is None:
            return t[self._fixed[i]]
        if len(t) > self.max_patches:
            return t[torch.randperm(len(t), generator=self.generator)[: self.max_patches]]
        return t

    def __getitem__(self, idx: Sequence[int] | torch.Tensor) -> Batch:
        idx = torch.as_tensor(idx)
        picks = [self._take(i) for i in idx.tolist()]
        m = max(len(p) for p in picks)
        z = torch.zeros((len(picks), m, picks[0].shape[1]), dtype=picks[0].dtype)
        valid = torch.zeros((len(picks), m), dtype=torch.bool)
        for j, p in enumerate(picks):
            z[j, : len(p)] = p
            valid[j, : len(p)] = True
        comp = None if self.composition is None else self.composition[idx]
        return Batch((z, valid), self.counts[idx], self.library[idx], comp)

    def features(self) -> torch.Tensor:
        """The mean embedding of every tile of each slide (B x D)."""
        return torch.stack([t.mean(0) for t in self.z])

    def closed_form_data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each slide's mean tile embedding, counts and library size (what a closed-form head fits on)."""
        return self.features(), self.counts, self.library

    def standardisation_inputs(self, per_tile: bool) -> torch.Tensor:
        """Every tile (for heads applied per tile), else each slide's mean embedding."""
        return torch.cat(self.z) if per_tile else self.features()
