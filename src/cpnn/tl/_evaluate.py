"""cp.tl.evaluate: per-gene Spearman and Pearson between predicted and measured expression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse, stats

from .._core import check_key, check_obs_mask, check_unique_obs, get_table, uns_cpnn
from .._errors import CpnnError


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


def lognorm(x: np.ndarray) -> np.ndarray:
    """log1p of counts per 10,000 per row (rows without counts stay 0)."""
    tot = x.sum(1, keepdims=True)
    return np.log1p(np.divide(x, tot, out=np.zeros_like(x), where=tot > 0) * 1e4)


def predicted_panel(adata: AnnData, layer: str) -> list[str] | None:
    """The genes predicted into ``layer`` (as recorded by predict), else the selected panel, else ``None``."""
    info = uns_cpnn(adata).get("predict", {})
    if info.get("key_added") == layer and info.get("genes"):
        return list(info["genes"])
    if "cpnn_selected" in adata.var:
        return list(adata.var_names[adata.var["cpnn_selected"].to_numpy(bool)])
    return None


def _nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN (without a warning) when every value is NaN, e.g. a constant predictor."""
    arr = np.asarray(values, dtype=float)
    return float(arr[np.isfinite(arr)].mean()) if np.isfinite(arr).any() else float("nan")


def evaluate(
    data: AnnData | Any,
    *,
    layer: str = "cpnn",
    groupby: str | None = "section",
    genes: Sequence[str] | None = None,
    spots: Any = None,
    truth_layer: str | None = None,
    normalize: bool = True,
    table_key: str = "table",
) -> pd.DataFrame:
    """Per-gene Spearman and Pearson correlation between predicted and measured expression.

    Correlations are computed across the spots of each group (e.g. each held-out section), then
    averaged over groups; the pooled column correlates across all evaluated spots at once.
    The two protocols differ a lot in the literature, so both are reported and labelled.

    Parameters
    ----------
    data
        AnnData or SpatialData.
    layer
        Layer with the predictions (e.g. from :func:`cpnn.tl.predict`).
    groupby
        ``obs`` column defining the groups (``None``: one group).
    genes
        Genes to evaluate; default the predicted panel (``uns["cpnn"]["predict"]["genes"]``, else
        ``var["cpnn_selected"]``).
    spots
        Spots to evaluate; default those with ``obs[f"{layer}_predicted"]``, else all.
    truth_layer
        Layer with the measured counts (default ``X``).
    normalize
        Compare log1p of counts per 10,000 over the evaluated genes (both sides), so that
        library size does not drive the correlation; ``False`` compares raw values.
    table_key
        Key of the table.

    Returns
    -------
    DataFrame indexed by gene with ``spearman_<group>``/``pearson_<group>`` per group, their means
    (``spearman_mean``, ``pearson_mean``) and ``spearman_pooled``/``pearson_pooled``. Genes constant
    within a group get NaN there, are counted, and are left out of that group's mean only.
    The summary (mean over genes per protocol, NaN counts) goes to ``uns["cpnn"]["metrics"][layer]``.
    """
    start = logg.info(f"evaluating layer {layer!r}")
    adata = get_table(data, table_key)
    df, summary = per_gene_metrics(
        adata, layer=layer, groupby=groupby, genes=genes, spots=spots, truth_layer=truth_layer, normalize=normalize
    )
    metrics = uns_cpnn(adata).setdefault("metrics", {})
    metrics[layer] = summary
    logg.info(
        f"    mean per-gene Spearman {summary['spearman_per_group_mean']:.3f} per {groupby or 'all'}, "
        f"{summary['spearman_pooled']:.3f} pooled",
        time=start,
        deep=f"added\n    'metrics/{layer}' (adata.uns['cpnn'])",
    )
    return df


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
    """The work of :func:`evaluate`, writing nothing: per-gene table and summary."""
    if layer not in adata.layers:
        raise CpnnError(
            f"layer={layer!r} is not a layer of the table; run cp.tl.predict first. Layers: {list(adata.layers)}."
        )
    if truth_layer is not None and truth_layer not in adata.layers:
        raise CpnnError(f"truth_layer={truth_layer!r} is not a layer of the table.")
    if genes is None:
        genes = predicted_panel(adata, layer)
        if genes is None:
            raise CpnnError("genes= is needed: there is no predicted panel recorded in the table.")
    genes = list(genes)
    unknown = [g for g in genes if g not in adata.var_names]
    if unknown:
        raise CpnnError(f"genes: {len(unknown)} are not in the table, e.g. {unknown[:5]}.")
    if len(genes) == 0:
        raise CpnnError("genes is empty.")
    check_unique_obs(adata)
    if spots is None and f"{layer}_predicted" in adata.obs:
        mask = adata.obs[f"{layer}_predicted"].to_numpy(bool)
    else:
        mask = check_obs_mask(adata, spots, argument="spots")
    if mask.sum() < 3:
        raise CpnnError(f"Only {int(mask.sum())} spots to evaluate; correlations need at least 3.")
    if groupby is not None:
        check_key(adata, groupby, argument="groupby")
    gidx = adata.var_names.get_indexer(genes)
    rows = np.flatnonzero(mask)

    def dense(m):
        block = m[rows][:, gidx]
        return block.toarray() if sparse.issparse(block) else np.asarray(block, dtype=np.float64)

    pred = dense(adata.layers[layer]).astype(np.float64)
    truth = dense(adata.layers[truth_layer] if truth_layer else adata.X).astype(np.float64)
    if not np.isfinite(pred).all():
        raise CpnnError(f"layer {layer!r} holds NaN or infinite predictions for evaluated spots.")
    if normalize:
        pred, truth = lognorm(pred), lognorm(truth)
    groups = adata.obs[groupby].astype(str).to_numpy()[rows] if groupby is not None else np.full(len(rows), "all")
    out = {}
    n_nan = {}
    for grp in pd.unique(groups):
        sel = groups == grp
        if sel.sum() < 3:
            continue
        out[f"spearman_{grp}"] = columnwise_spearman(pred[sel], truth[sel])
        out[f"pearson_{grp}"] = columnwise_pearson(pred[sel], truth[sel])
        n_nan[str(grp)] = int(np.isnan(out[f"spearman_{grp}"]).sum())
    df = pd.DataFrame(out, index=pd.Index(genes, name="gene"))
    for m in ("spearman", "pearson"):
        cols = [c for c in df.columns if c.startswith(f"{m}_")]
        df[f"{m}_mean"] = df[cols].mean(axis=1, skipna=True)
    df["spearman_pooled"] = columnwise_spearman(pred, truth)
    df["pearson_pooled"] = columnwise_pearson(pred, truth)
    group_means = {
        m: [df[c].mean() for c in df.columns if c.startswith(f"{m}_") and c not in (f"{m}_mean", f"{m}_pooled")]
        for m in ("spearman", "pearson")
    }
    summary = {
        "spearman_per_group_mean": _nanmean(group_means["spearman"]),
        "pearson_per_group_mean": _nanmean(group_means["pearson"]),
        "spearman_pooled": float(df["spearman_pooled"].mean()),
        "pearson_pooled": float(df["pearson_pooled"].mean()),
        "n_genes": len(genes),
        "n_spots": int(mask.sum()),
        "groupby": groupby or "",
        "n_nan_per_group": n_nan,
    }
    return df, summary
