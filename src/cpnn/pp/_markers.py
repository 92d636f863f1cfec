"""Marker genes of each cell type of a reference, found with scanpy's rank_genes_groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from .._core import check_key
from .._errors import CpnnError


def marker_genes(
    reference: AnnData,
    cell_type_key: str,
    n: int,
    names: pd.Index,
    *,
    layer: str | None = None,
    min_logfc: float = 1.0,
) -> dict[str, list[str]]:
    """Up to ``n`` markers per cell type among the genes ``names`` (Wilcoxon test on log-normalised counts).

    A marker is up in its type (log fold change at least ``min_logfc``, adjusted p below 0.05); the
    strongest come first.
    """
    if not isinstance(reference, AnnData):
        raise CpnnError("markers= needs reference= (a labelled single-cell AnnData with raw counts).")
    if cell_type_key is None:
        raise CpnnError("markers= needs cell_type_key= (the reference's obs column of cell types).")
    check_key(reference, cell_type_key, argument="cell_type_key")
    shared = reference.var_names.intersection(names.unique(), sort=False)
    if len(shared) == 0:
        raise CpnnError(
            "reference and the table share no gene, so no marker can be found; check the gene naming "
            "(or pass gene_symbols=)."
        )
    X = reference.layers[layer] if layer is not None else reference.X
    X = X[:, reference.var_names.get_indexer(shared)]
    labels = reference.obs[cell_type_key].astype(str)
    counts = labels.value_counts()
    keep = labels.isin(counts[counts >= 3].index).to_numpy()
    tmp = AnnData(
        sparse.csr_matrix(X[keep], dtype=np.float32) if sparse.issparse(X) else np.asarray(X[keep], np.float32),
        obs=pd.DataFrame({"group": pd.Categorical(labels[keep].to_numpy())}, index=reference.obs_names[keep]),
        var=pd.DataFrame(index=shared),
    )
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.tl.rank_genes_groups(tmp, "group", method="wilcoxon", n_genes=max(50, 5 * n))
    out = {}
    for group in tmp.obs["group"].cat.categories:
        table = sc.get.rank_genes_groups_df(tmp, group=group)
        good = table[(table["logfoldchanges"] >= min_logfc) & (table["pvals_adj"] < 0.05)]
        out[str(group)] = [str(g) for g in good["names"].head(n)]
    return out
