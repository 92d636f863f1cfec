"""An input kind from outside cpnn, in one file: spot embeddings another pipeline wrote to a ``.npy`` file.

It uses only cpnn's public names (tests/test_architecture.py checks that); docs/architecture.md
("Add an input kind") walks through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import cpnn as cp


@dataclass
class MemmapSpots:
    """A SpatialData's table and the embeddings of its spots, one row per spot, in a ``.npy`` file."""

    sdata: Any
    path: Path

    def rows(self, mask: np.ndarray) -> np.ndarray:
        """The embeddings of the ``mask`` spots (read from the memory map, nothing else loaded)."""
        return np.array(np.load(self.path, mmap_mode="r")[mask], dtype=np.float32)


@cp.tl.register_input_kind("memmap")
class MemmapKind(cp.tl.InputKind):
    """Spot level, frozen embeddings read from a memory map instead of ``obsm``."""

    def claims(self, data: Any, *, finetune: bool) -> bool:
        return isinstance(data, MemmapSpots) and not finetune

    def table(self, data: MemmapSpots, config: cp.tl.FitConfig):
        return data.sdata["table"]

    def read(self, data: MemmapSpots, config, train, validation, run: cp.tl.Run) -> cp.tl.Split:
        return cp.tl.read_split(run.table, config, train, validation, targets=run.targets)

    def inputs(self, data: MemmapSpots, config, split: cp.tl.Split, run: cp.tl.Run) -> cp.tl.Inputs:
        x_va = torch.as_tensor(data.rows(split.validation)) if split.validation.any() else None
        train, val = cp.tl.spot_datasets(split, torch.as_tensor(data.rows(split.train)), x_va)
        return cp.tl.Inputs(train, val, int(train.x.shape[1]), nn.Identity(), config.encoder_config)

    def predict(self, data: MemmapSpots, model: cp.CPNN, request: cp.tl.PredictRequest) -> None:
        table = data.sdata["table"]
        mask = cp.tl.row_mask(table, request.rows)
        cp.tl.predict_rows(table, model, data.rows(mask), mask, request)
