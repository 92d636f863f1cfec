"""Batch order for the training loop: the seam where a distributed sampler drops in."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler


class PermutationSampler(Sampler[int]):
    """A fresh random order of ``n`` items per pass, drawn from ``generator`` (one draw per epoch).

    Unlike :class:`~torch.utils.data.RandomSampler` it draws nothing when a pass ends, so the
    generator's stream (shared with augmentation and tile draws) depends only on the epochs run.
    """

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = int(n), generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


class RankBatchSampler(Sampler[list[int]]):
    """Global batches of ``sampler``'s order, of which this process takes every ``world``-th row from ``rank``.

    Every process draws the same permutation (same generator seed), so together they cover each
    global batch exactly once: with gradients averaged across processes (and each process's loss
    weighted by its share of the batch), training equals one process with the same global batch.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, rank: int, world: int) -> None:
        self.sampler, self.batch_size, self.rank, self.world = sampler, int(batch_size), int(rank), int(world)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size][self.rank :: self.world]


def _batch(x):
    return x


def batch_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
    batch_sampler: Sampler[list[int]] | None = None,
) -> DataLoader:
    """Batches of ``dataset`` in the order of ``sampler`` (default: in order), one dataset call per batch.

    ``batch_sampler`` replaces both (e.g. a :class:`RankBatchSampler` under several processes).
    """
    order = sampler if sampler is not None else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=batch_sampler if batch_sampler is not None else BatchSampler(order, batch_size, drop_last=False),
        collate_fn=_batch,
        num_workers=num_workers,
        # the loader's own seed draw must not touch the global or the training generator
        generator=torch.Generator(),
    )
