"""Writing compositions into a table: one helper for predictions and deconvolutions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData


def write_fractions(adata: AnnData, rows: np.ndarray, weights: np.ndarray, types: list[str], key: str) -> None:
    """Fractions of ``rows`` into ``obsm[key]`` (DataFrame, columns = ``types``), keeping other rows' values."""
    props = pd.DataFrame(np.nan, index=adata.obs_names, columns=types, dtype=np.float32)
    old = adata.obsm.get(key)
    if isinstance(old, pd.DataFrame) and list(old.columns) == types:
        props = old.copy()
    props.iloc[rows] = weights
    adata.obsm[key] = props


def write_composition(
    adata: AnnData, rows: np.ndarray, weights: np.ndarray, types: list[str], groups: dict[str, str], key: str
) -> list[str]:
    """A composition into ``obsm[key]``; returns the keys written.

    With grouped (fine) cell types the group sums go to ``obsm[key]`` and the fine weights to
    ``obsm[key + "_fine"]``.
    """
    if not groups:
        write_fractions(adata, rows, weights, types, key)
        return [key]
    write_fractions(adata, rows, weights, types, f"{key}_fine")
    names = list(dict.fromkeys(groups[t] for t in types))
    member = np.array([[groups[t] == g for g in names] for t in types], dtype=weights.dtype)
    write_fractions(adata, rows, weights @ member, names, key)
    return [key, f"{key}_fine"]
