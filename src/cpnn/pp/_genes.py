"""Choosing the gene panel that cpnn predicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._core import (
    MARKER,
    SELECTED,
    check_counts,
    check_genes,
    check_int,
    check_unique_var,
    gene_names,
    get_table,
    return_copy,
    uns_cpnn,
)
from .._errors import CpnnError
from ._markers import marker_genes

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData


def normalized_mean(X: Any, target_sum: float = 1e4) -> np.ndarray:
    """Mean over rows of counts scaled to ``target_sum`` per row (no log)."""
    totals = np.asarray(X.sum(axis=1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals, dtype=float), where=totals > 0)
    if sparse.issparse(X):
        return np.asarray((sparse.diags(scale) @ X).mean(axis=0)).ravel()
    return (np.asarray(X) * scale[:, None]).mean(axis=0)


def select_genes(
    data: AnnData | SpatialData,
    *,
    n_top_genes: int = 250,
    flavor: Literal["mean", "hvg"] = "mean",
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    gene_symbols: str | None = None,
    markers: int = 0,
    reference: AnnData | None = None,
    cell_type_key: str | None = None,
    table_key: str = "table",
    copy: bool = False,
) -> AnnData | SpatialData | None:
    """Mark the gene panel that cpnn will predict.

    Parameters
    ----------
    data
        AnnData, or SpatialData holding the table under ``table_key``, with raw counts.
    n_top_genes
        Size of the panel for ``flavor="mean"`` and ``"hvg"``.
    flavor
        ``"mean"``: top genes by mean normalised expression (counts scaled to 1e4 per spot), the
        paper's protocol. ``"hvg"``: :func:`scanpy.pp.highly_variable_genes` (seurat flavour on
        log-normalised counts).
    genes
        An explicit panel (e.g. :func:`cpnn.datasets.histogene_genes`); overrides ``flavor``.
        Genes absent from the table are reported and skipped.
    layer
        Layer holding the raw counts (default ``X``).
    gene_symbols
        ``var`` column holding the names that ``genes`` lists (e.g. symbols when ``var_names`` are
        Ensembl IDs).
    markers
        Add up to this many marker genes per cell type of ``reference`` (found with
        :func:`scanpy.tl.rank_genes_groups`, Wilcoxon, on log-normalised counts) to the panel, so
        that every type's prototype differs from the others' on it: without markers, types such as
        T cells, B cells or endothelial cells can look alike on a panel of highly expressed genes,
        and their composition weights cannot be told apart. Marker-only genes are flagged in
        ``var["cpnn_marker"]``; evaluate on the rest (``genes=``) to report the base panel.
    reference
        Labelled single-cell AnnData (raw counts) for marker genes.
    cell_type_key
        ``obs`` column of ``reference`` holding the cell types.
    table_key
        Key of the table when ``data`` is a SpatialData.
    copy
        Return a copy instead of writing into ``data``.

    Returns
    -------
    ``None``, or a copy of ``data`` when ``copy=True``. Sets ``var["cpnn_selected"]`` (bool),
    ``var["cpnn_marker"]`` (bool: in the panel as a marker only) and ``uns["cpnn"]["panel"]``
    (flavor, requested size, genes skipped, markers per cell type).
    """
    start = logg.info("selecting the cpnn gene panel")
    data = return_copy(data, copy)
    adata = get_table(data, table_key)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise CpnnError(f"The table {table_key!r} is empty ({adata.n_obs} x {adata.n_vars}); nothing to select.")
    if layer is not None and layer not in adata.layers:
        raise CpnnError(f"layer={layer!r} is not a layer of the table; layers are {list(adata.layers)}.")
    X = adata.layers[layer] if layer is not None else adata.X
    check_counts(X, argument=f"layer {layer!r}" if layer else "X", integer=False)
    check_unique_var(adata)

    skipped: list[str] = []
    if genes is not None:
        genes = [str(g) for g in genes]
        names = gene_names(adata, gene_symbols)
        skipped = check_genes(names, genes, argument="genes")
        selected = names.isin(genes)
        method = "explicit list"
        if skipped:
            logg.warning(
                f"{len(skipped)} of {len(genes)} genes are not in the table and are skipped, e.g. {skipped[:5]}"
            )
    else:
        n_top_genes = check_int("n_top_genes", n_top_genes)
        n = min(n_top_genes, adata.n_vars)
        if n_top_genes > adata.n_vars:
            totals = np.asarray(X.sum(axis=0)).ravel()
            logg.warning(
                f"n_top_genes={n_top_genes} is more than the table's {adata.n_vars} genes: all {adata.n_vars} are "
                f"selected, {int((totals <= 0).sum())} of them without any count"
            )
        if flavor == "mean":
            score = normalized_mean(X)
            order = np.argsort(-score, kind="stable")[:n]
            selected = np.zeros(adata.n_vars, bool)
            selected[order] = True
        elif flavor == "hvg":
            tmp = AnnData(X.copy() if sparse.issparse(X) else np.asarray(X, dtype=np.float32))
            tmp.var_names = adata.var_names
            sc.pp.normalize_total(tmp, target_sum=1e4)
            sc.pp.log1p(tmp)
            sc.pp.highly_variable_genes(tmp, n_top_genes=n, flavor="seurat")
            # exactly n genes: rank by normalised dispersion (scanpy's cut keeps ties)
            disp = np.nan_to_num(tmp.var["dispersions_norm"].to_numpy(float), nan=-np.inf)
            selected = np.zeros(adata.n_vars, bool)
            selected[np.argsort(-disp, kind="stable")[:n]] = True
        else:
            raise CpnnError(f"flavor={flavor!r}; use 'mean' or 'hvg', or pass genes=[...].")
        method = flavor

    selected = np.asarray(selected, bool)
    marker_only = np.zeros(adata.n_vars, bool)
    found: dict[str, list[str]] = {}
    if check_int("markers", markers, minimum=0):
        names = gene_names(adata, gene_symbols)
        found = marker_genes(reference, cell_type_key, int(markers), names)
        wanted = names.isin([g for genes_ in found.values() for g in genes_])
        marker_only = wanted & ~selected
        selected = selected | wanted
        empty = [t for t, genes_ in found.items() if not genes_]
        if empty:
            logg.warning(
                f"no marker found for cell type(s) {empty} among the table's genes: their prototypes may look "
                "alike on the panel, and their weights cannot be told apart"
            )
    adata.var[SELECTED] = pd.Series(selected, index=adata.var_names)
    adata.var[MARKER] = pd.Series(marker_only, index=adata.var_names)
    uns_cpnn(adata)["panel"] = {
        "flavor": method,
        "n_top_genes": int(n_top_genes) if genes is None else len(genes),
        "n_selected": int(np.sum(selected)),
        "n_skipped": len(skipped),
        "skipped": skipped[:50],
        "n_markers_added": int(marker_only.sum()),
        "markers": found,
    }
    logg.info(
        f"    {int(np.sum(selected))} genes selected ({method})",
        time=start,
        deep="added\n    'cpnn_selected', boolean vector (adata.var)\n    'panel' (adata.uns['cpnn'])",
    )
    return data if copy else None
