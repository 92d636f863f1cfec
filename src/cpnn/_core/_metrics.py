"""Per-gene agreement between predicted and measured expression, computed from the table without writing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import CpnnError
from ._keys import predicted_column
from ._panel import dense_rows, layer_matrix, predicted_genes, predicted_mask
from ._stats import columnwise_pearson, columnwise_spearman, lognorm, nanmean, near_constant
from ._validate import check_key, check_obs_mask, check_unique_obs, region_columns


def resolve_groupby(adata: AnnData, groupby: str | None, *, default: str = "section") -> str | None:
    """``groupby``, falling back from the default ``"section"`` to the table's region column when absent."""
    if groupby is None:
        return None
    if groupby == default and groupby not in adata.obs:
        cols = region_columns(adata)
        if cols:
            return cols[0]
    check_key(adata, groupby, argument="groupby")
    return groupby


def per_gene_metrics(
    adata: AnnData,
    *,
    layer: str,
    groupby: str | None,
    genes: Sequence[str] | None,
    spots: Any,
    truth_layer: str | None,
    normalize: bool,
) -> tuple[pd.DataFrame, dict]:
    """The work of :func:`cpnn.tl.evaluate`, writing nothing: per-gene table and summary."""
    if layer not in adata.layers:
        raise CpnnError(
            f"layer={layer!r} is not a layer of the table; run cp.tl.predict first. Layers: {list(adata.layers)}."
        )
    truth_matrix = layer_matrix(adata, truth_layer, argument="truth_layer")
    check_unique_obs(adata)
    marked = predicted_mask(adata, layer)
    mask = marked if spots is None and marked is not None else check_obs_mask(adata, spots, argument="spots")
    if mask.sum() < 3:
        raise CpnnError(f"Only {int(mask.sum())} spots to evaluate; correlations need at least 3.")
    if genes is not None:
        genes = [str(g) for g in genes]
        unknown = [g for g in genes if g not in adata.var_names]
        if unknown:
            raise CpnnError(f"genes: {len(unknown)} are not in the table, e.g. {unknown[:5]}.")
        if len(genes) == 0:
            raise CpnnError("genes is empty.")
    genes = predicted_genes(adata, layer, mask, genes)
    if genes is None:
        raise CpnnError("genes= is needed: there is no predicted panel recorded in the table.")
    genes = list(genes)
    groupby = resolve_groupby(adata, groupby)
    gidx = adata.var_names.get_indexer(genes)
    rows = np.flatnonzero(mask)
    pred = dense_rows(adata.layers[layer], rows, gidx).astype(np.float64)
    truth = dense_rows(truth_matrix, rows, gidx).astype(np.float64)
    if not np.isfinite(pred).all():
        bad = int((~np.isfinite(pred)).any(1).sum())
        if marked is not None and (~marked[rows]).any():
            col = predicted_column(layer)
            raise CpnnError(
                f"{int((~marked[rows]).sum())} of the {len(rows)} spots in spots= were never predicted into layer "
                f"{layer!r} (NaN there, as in obsm): keep the predicted ones, spots=adata.obs[{col!r}] (the same "
                f"mask gives scanpy a table without NaN: adata[adata.obs[{col!r}]].copy()), or leave spots= out."
            )
        raise CpnnError(f"layer {layer!r} holds NaN or infinite predictions for {bad} evaluated spots.")
    if normalize:
        pred, truth = lognorm(pred), lognorm(truth)
    groups = adata.obs[groupby].astype(str).to_numpy()[rows] if groupby is not None else np.full(len(rows), "all")
    out = {}
    n_nan = {}
    for grp in pd.unique(groups):
        sel = groups == grp
        if sel.sum() < 3:
            continue
        flat = near_constant(pred[sel]) | near_constant(truth[sel])  # rounding noise is no signal
        out[f"spearman_{grp}"] = np.where(flat, np.nan, columnwise_spearman(pred[sel], truth[sel]))
        out[f"pearson_{grp}"] = np.where(flat, np.nan, columnwise_pearson(pred[sel], truth[sel]))
        n_nan[str(grp)] = int(np.isnan(out[f"spearman_{grp}"]).sum())
    df = pd.DataFrame(out, index=pd.Index(genes, name="gene"))
    for m in ("spearman", "pearson"):
        cols = [c for c in df.columns if c.startswith(f"{m}_")]
        df[f"{m}_mean"] = df[cols].mean(axis=1, skipna=True)
    flat = near_constant(pred) | near_constant(truth)
    df["spearman_pooled"] = np.where(flat, np.nan, columnwise_spearman(pred, truth))
    df["pearson_pooled"] = np.where(flat, np.nan, columnwise_pearson(pred, truth))
    group_means = {
        m: [df[c].mean() for c in df.columns if c.startswith(f"{m}_") and c not in (f"{m}_mean", f"{m}_pooled")]
        for m in ("spearman", "pearson")
    }
    summary = {
        "spearman_per_group_mean": nanmean(group_means["spearman"]),
        "pearson_per_group_mean": nanmean(group_means["pearson"]),
        "spearman_pooled": float(df["spearman_pooled"].mean()),
        "pearson_pooled": float(df["pearson_pooled"].mean()),
        "n_genes": len(genes),
        "n_spots": int(mask.sum()),
        "groupby": groupby or "",
        "n_nan_per_group": n_nan,
    }
    return df, summary
