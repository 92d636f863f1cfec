"""Rows of many samples, kept on disk and read a batch at a time: memory bounded by a batch, not a collection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ._datasets import Batch


@dataclass
class Shard:
    """One sample's training rows: inputs and panel counts (memory maps or arrays), optional targets.

    ``rows`` selects the rows of ``x`` (e.g. a sample's spots with counts, out of its embedding cache);
    ``counts``, ``composition`` and ``sample`` (codes of ``sample_key``) hold those rows only.
    """

    name: str
    x: np.ndarray
    rows: np.ndarray
    counts: np.ndarray
    composition: np.ndarray | None = None
    sample: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)


class ShardDataset(Dataset):
    """Spots of several samples as one dataset; each batch reads only its rows from the samples' arrays.

    Parameters
    ----------
    shards
        One :class:`Shard` per sample.
    eval_batch_size
        Rows per step when computing validation losses.
    validation
        Library sizes of at least 1 (as validation losses use them).
    """

    def __init__(self, shards: Sequence[Shard], *, eval_batch_size: int | None = None, validation: bool = False):
        self.shards = [s for s in shards if len(s)]
        self.offsets = np.cumsum([0, *[len(s) for s in self.shards]])
        self.eval_batch_size = eval_batch_size
        self.validation = validation
        self.generator: torch.Generator | None = None
        self.sample = None
        self.has_composition = bool(self.shards) and all(s.composition is not None for s in self.shards)
        self.has_sample = bool(self.shards) and all(s.sample is not None for s in self.shards)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _gather(self, idx: np.ndarray, field: str) -> np.ndarray:
        out = None
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for k in np.unique(which):
            at = np.flatnonzero(which == k)
            local = idx[at] - self.offsets[k]
            shard = self.shards[k]
            order = np.argsort(local, kind="stable")  # sorted reads are sequential on disk
            if field == "x":
                values = np.asarray(shard.x[shard.rows[local[order]]], dtype=np.float32)
            elif field == "sample":
                values = np.asarray(shard.sample[local[order]], dtype=np.int64)
            else:
                values = np.asarray(getattr(shard, field)[local[order]], dtype=np.float32)
            if out is None:
                out = np.empty((len(idx), *values.shape[1:]), values.dtype)
            out[at[order]] = values
        return out

    def __getitem__(self, idx: Sequence[int] | torch.Tensor) -> Batch:
        idx = np.asarray(torch.as_tensor(idx).numpy(), dtype=np.int64)
        counts = self._gather(idx, "counts")
        library = counts.sum(1)
        if self.validation:
            library = library.clip(1.0)
        comp = torch.from_numpy(self._gather(idx, "composition")) if self.has_composition else None
        sample = torch.from_numpy(self._gather(idx, "sample")) if self.has_sample else None
        return Batch(
            torch.from_numpy(self._gather(idx, "x")), torch.from_numpy(counts), torch.from_numpy(library), comp, sample
        )

    def closed_form_data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every row's input, counts and library size (what a closed-form head fits on; reads the whole collection)."""
        batch = self[np.arange(len(self))]
        return batch.x, batch.counts, batch.library

    def standardisation_inputs(self, per_tile: bool, limit: int = 50_000) -> torch.Tensor:
        """Up to ``limit`` evenly spaced rows: enough for the means and standard deviations of the inputs."""
        idx = np.unique(np.linspace(0, len(self) - 1, min(limit, len(self))).round().astype(np.int64))
        return self[idx].x
