"""log-CP10k (numpy and torch) and column-wise correlations, written once for every layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

#: Counts per spot that log-normalised expression is scaled to.
TARGET_SUM = 1e4


def lognorm(x: np.ndarray) -> np.ndarray:
    """log1p of counts per 10,000 per row (rows without counts stay 0)."""
    tot = x.sum(1, keepdims=True)
    return np.log1p(np.divide(x, tot, out=np.zeros_like(x), where=tot > 0) * TARGET_SUM)


def lognorm_torch(counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    """log1p of counts per 10,000 of each row's ``library`` (at least 1), as the losses compare them."""
    return torch.log1p(counts / library.clamp_min(1.0)[:, None] * TARGET_SUM)


def near_constant(a: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """Columns whose spread is within rounding of their level: constant for every practical purpose.

    float32 predictions that differ only by rounding (relative spread ~1e-8) would otherwise get
    arbitrary correlations from the rounding noise.
    """
    a = np.asarray(a, dtype=np.float64)
    if len(a) == 0:
        return np.ones(a.shape[1:], bool)
    spread = a.max(0) - a.min(0)
    scale = np.maximum(np.abs(a).max(0), 1e-300)
    return ~(spread > rtol * scale)


def columnwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b``; NaN where either is constant."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    num = (a * b).sum(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    tol = 1e-12 * np.maximum(1.0, np.abs(num))
    r[~(den > tol)] = np.nan
    return np.clip(r, -1.0, 1.0)


def columnwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation per column (average ranks for ties); NaN where either column is constant."""
    return columnwise_pearson(stats.rankdata(a, axis=0), stats.rankdata(b, axis=0))


def nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN (without a warning) when every value is NaN, e.g. a constant predictor."""
    arr = np.asarray(values, dtype=float)
    return float(arr[np.isfinite(arr)].mean()) if np.isfinite(arr).any() else float("nan")


#: Largest whole number float32 holds exactly (2**24): counts above it are kept in float64.
FLOAT32_EXACT = 2**24


def counts_dtype(values: Any) -> type:
    """``np.float32`` for counts float32 holds exactly (all below 2**24), else ``np.float64``."""
    data = values.data if hasattr(values, "data") and not isinstance(values, np.ndarray) else np.asarray(values)
    data = np.asarray(data)
    return np.float64 if data.size and float(np.nanmax(np.abs(data))) >= FLOAT32_EXACT else np.float32
