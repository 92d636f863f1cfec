"""Cell-type prototypes (mean expression per cell type) from a scRNA-seq reference or ready profiles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._core import (
    PROTOTYPES,
    SELECTED,
    check_counts,
    check_key,
    gene_names,
    get_table,
    in_reference_column,
    return_copy,
    to_uns,
    uns_cpnn,
    uses_cpu_threads,
)
from .._errors import CpnnError
from .._settings import settings
from ..models import fit_nb_regression

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

#: Fewest panel genes with a prototype that cpnn accepts.
MIN_PANEL_GENES = 10
#: varm key of the prototypes unless told otherwise.
DEFAULT_KEY = PROTOTYPES


def reference_qc(
    reference: AnnData,
    X,
    *,
    max_mito_pct: float | None,
    min_genes: int | None,
    max_genes: int | None,
    min_cells_per_gene: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return boolean masks of the cells and genes of ``reference`` that pass QC."""
    detected = np.asarray((X > 0).sum(axis=1)).ravel()
    cells = np.ones(reference.n_obs, bool)
    if min_genes is not None:
        cells &= detected >= min_genes
    if max_genes is not None:
        cells &= detected <= max_genes
    if max_mito_pct is not None:
        mito = reference.var_names.str.upper().str.startswith("MT-")
        if mito.any():
            totals = np.asarray(X.sum(axis=1)).ravel()
            mito_counts = np.asarray(X[:, mito].sum(axis=1)).ravel()
            pct = 100 * np.divide(mito_counts, totals, out=np.zeros_like(totals, float), where=totals > 0)
            cells &= pct < max_mito_pct
    threshold = min_cells_per_gene * cells.sum() if 0 < min_cells_per_gene < 1 else min_cells_per_gene
    genes = np.asarray((X[cells] > 0).sum(axis=0)).ravel() >= threshold
    return cells, genes


def _profiles_prototypes(
    reference: pd.DataFrame, cell_type_map: Mapping[str, str] | None, rna_content: Mapping[str, float] | None
) -> tuple[pd.DataFrame, dict]:
    values = reference.to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise CpnnError("reference (profiles DataFrame) contains NaN or infinite values; fill or drop them.")
    if (values < 0).any():
        raise CpnnError("reference (profiles DataFrame) contains negative values; prototypes must be non-negative.")
    if reference.index.has_duplicates:
        raise CpnnError("reference (profiles DataFrame) has duplicated gene names in its index.")
    profiles = reference.astype(float)
    info: dict = {"n_states": int(reference.shape[1])}
    if cell_type_map is not None:
        missing = [s for s in profiles.columns if s not in cell_type_map]
        if missing:
            raise CpnnError(f"cell_type_map has no entry for the profile column(s) {missing[:5]}.")
        types = pd.Series({s: cell_type_map[s] for s in profiles.columns})
        profiles = profiles.T.groupby(types.values, sort=False).mean().T
        info["cell_type_map"] = {str(k): str(v) for k, v in types.items()}
    if rna_content is None:
        info["units"] = "profile scale"
        return profiles, info
    if not isinstance(rna_content, Mapping):
        raise CpnnError(
            f"rna_content must be a mapping cell type -> mean total counts of a cell, got {type(rna_content).__name__}."
        )
    missing = [str(t) for t in profiles.columns if t not in rna_content]
    if missing:
        raise CpnnError(
            f"rna_content has no entry for the cell type(s) {missing[:5]}; give every type its counts a cell."
        )
    content = np.array([float(rna_content[t]) for t in profiles.columns])
    if not (np.isfinite(content).all() and (content > 0).all()):
        raise CpnnError(
            "rna_content: every value must be a positive number (the mean total counts of a cell of the type)."
        )
    totals = profiles.sum(0).to_numpy()
    if not (totals > 0).all():
        empty = [str(t) for t, v in zip(profiles.columns, totals, strict=True) if v <= 0]
        raise CpnnError(f"reference (profiles): the column(s) {empty[:5]} are zero in every gene.")
    # each profile scaled to an average cell of its type: its gene shares times the cell's total counts
    profiles = profiles / totals * content
    info.update(units="cells", rna_content={str(t): float(c) for t, c in zip(profiles.columns, content, strict=True)})
    return profiles, info


def _groups(
    reference: AnnData | pd.DataFrame, groups: Any, cell_type_key: str | None, types: list[str]
) -> dict[str, str] | None:
    """Map each prototype to its display group (``None`` when no grouping was asked for)."""
    if groups is None:
        return None
    if isinstance(groups, str):
        if not isinstance(reference, AnnData):
            raise CpnnError("groups as a column name needs an AnnData reference; pass a mapping for profiles.")
        check_key(reference, groups, argument="groups")
        pairs = reference.obs[[cell_type_key, groups]].astype(str)
        top = pairs.groupby(cell_type_key, observed=True)[groups].agg(lambda v: v.value_counts().index[0])
        mapping = top.to_dict()
    elif isinstance(groups, Mapping):
        mapping = {str(k): str(v) for k, v in groups.items()}
    else:
        raise CpnnError(f"groups must be an obs column name or a mapping, got {type(groups).__name__}.")
    missing = [t for t in types if t not in mapping]
    if missing:
        raise CpnnError(f"groups has no entry for the prototype(s) {missing[:5]}; map every prototype.")
    return {t: mapping[t] for t in types}


def _single_cell_prototypes(
    reference: AnnData,
    *,
    cell_type_key: str | None,
    method: str,
    batch_key: str | None,
    layer: str | None,
    genes: pd.Index,
    min_cells: int,
    qc: dict,
    n_iter: int,
    device: str,
) -> tuple[pd.DataFrame, dict]:
    if cell_type_key is None:
        raise CpnnError("cell_type_key is needed when reference is an AnnData, e.g. cell_type_key='celltype_major'.")
    check_key(reference, cell_type_key, argument="cell_type_key")
    if batch_key is not None:
        check_key(reference, batch_key, argument="batch_key")
    if layer is not None and layer not in reference.layers:
        raise CpnnError(f"layer={layer!r} is not a layer of reference; its layers are {list(reference.layers)}.")
    if reference.var_names.has_duplicates:
        raise CpnnError("reference has duplicated var_names; call reference.var_names_make_unique() first.")
    X = reference.layers[layer] if layer is not None else reference.X
    X = sparse.csr_matrix(X) if sparse.issparse(X) else np.asarray(X)
    check_counts(X, argument=f"reference layer {layer!r}" if layer else "reference.X", integer=method == "nb")
    labels = reference.obs[cell_type_key]
    if labels.isna().any():
        raise CpnnError(
            f"reference.obs[{cell_type_key!r}] has {int(labels.isna().sum())} missing labels; drop those cells."
        )

    cells, gene_ok = reference_qc(reference, X, **qc)
    counts_all = labels[cells].astype(str).value_counts()
    kept = counts_all[counts_all >= min_cells]
    dropped = counts_all[counts_all < min_cells]
    if len(dropped):
        logg.warning(
            f"cell types with fewer than min_cells={min_cells} cells after QC are dropped: { {str(k): int(v) for k, v in dropped.items()} }"
        )
    if len(kept) < 2:
        raise CpnnError(
            f"reference has {len(kept)} cell type(s) with at least min_cells={min_cells} cells after QC "
            f"({dict(counts_all)}); cpnn needs at least two. Lower min_cells or use another cell_type_key."
        )
    order = sorted(kept.index)
    cells &= labels.astype(str).isin(order).to_numpy()
    use_genes = reference.var_names[gene_ok].intersection(genes, sort=False)
    if len(use_genes) == 0:
        raise CpnnError(
            "reference and the table share no gene that passes QC; check the gene naming "
            f"(reference: {list(reference.var_names[:3])}, table: {list(genes[:3])})."
        )
    gidx = reference.var_names.get_indexer(use_genes)
    library = np.asarray(X[cells].sum(axis=1)).ravel()  # over all genes, before subsetting
    Xg = X[cells][:, gidx]
    codes = pd.Categorical(labels[cells].astype(str), categories=order).codes
    # each type's RNA content: the mean total counts (all genes) of its cells after QC
    content = np.bincount(codes, weights=library, minlength=len(order)) / np.bincount(codes, minlength=len(order))
    info: dict = {
        "n_cells": {t: int(kept[t]) for t in order},
        "rna_content": {t: float(c) for t, c in zip(order, content, strict=True)},
        "n_cells_after_qc": int(cells.sum()),
        "n_genes_after_qc": int(gene_ok.sum()),
        "qc": {k: v for k, v in qc.items()},
    }
    if method == "nb":
        batch_codes, n_batches = None, 1
        if batch_key is not None:
            cat = pd.Categorical(reference.obs[batch_key][cells].astype(str))
            batch_codes, n_batches = cat.codes.astype(int), len(cat.categories)
        res = fit_nb_regression(
            Xg,
            codes,
            len(order),
            batch=batch_codes,
            n_batches=n_batches,
            library=library,
            n_iter=n_iter,
            device=settings.resolve_device(device),
            progress=settings.progress_bar,
        )
        # count scale of a cell: the expected counts of an average cell of each type, so that a weight on a
        # prototype counts cells (RNA-rich types have larger prototypes, as cell2location's signatures do)
        values = res.rates.T * content[None, :]
        info.update(
            n_iter=res.n_iter,
            final_loss=float(res.loss_history[-1]),
            n_batches=int(n_batches),
            median_library_size=float(np.median(library)),
            units="cells",
        )
    elif method == "mean":
        norm = sparse.diags(1e4 / np.maximum(library, 1.0)) @ sparse.csr_matrix(Xg, dtype=np.float64)
        norm = norm.log1p()
        onehot = sparse.csr_matrix(
            (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(order), len(codes))
        )
        sums = (onehot @ norm).toarray()
        values = (sums / np.asarray(onehot.sum(axis=1))).T
        info["units"] = "normalised expression"
    else:
        raise CpnnError(f"method={method!r}; use 'nb' (the paper's estimator) or 'mean' (naive).")
    return pd.DataFrame(values, index=use_genes, columns=order), info


@uses_cpu_threads
def build_prototypes(
    data: AnnData | SpatialData,
    reference: AnnData | pd.DataFrame,
    *,
    cell_type_key: str | None = None,
    method: Literal["nb", "mean"] = "nb",
    batch_key: str | None = None,
    layer: str | None = None,
    cell_type_map: Mapping[str, str] | None = None,
    min_cells: int = 10,
    max_mito_pct: float | None = 30.0,
    min_genes: int | None = 200,
    max_genes: int | None = 2500,
    min_cells_per_gene: float = 0.002,
    n_iter: int = 30,
    device: str = "auto",
    gene_symbols: str | None = None,
    groups: str | Mapping[str, str] | None = None,
    rna_content: Mapping[str, float] | None = None,
    table_key: str = "table",
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
) -> AnnData | SpatialData | None:
    """Estimate cell-type prototypes (mean expression per cell type) for the table's genes.

    Parameters
    ----------
    data
        AnnData, or SpatialData holding the target table under ``table_key``.
    reference
        A labelled single-cell AnnData with raw counts (in ``X`` or ``layer``), or a DataFrame of
        genes x cell types (or cell states) of ready profiles, e.g.
        :func:`cpnn.datasets.wu2021_profiles`.
    cell_type_key
        Column of ``reference.obs`` with the cell-type labels (AnnData reference only).
    method
        ``"nb"``: the paper's estimator, a negative-binomial regression of raw counts on cell type
        with per-cell library size and, with ``batch_key``, a per-batch gene effect; prototypes
        are the fitted means per type with the batch effect removed, on the count scale of an
        average cell of the type (its mean total counts after QC, recorded as ``rna_content``), so
        that a composition over these prototypes counts cells. ``"mean"``: per-type mean of
        log-normalised expression (1e4 per cell, log1p), the paper's "naive" ablation.
    batch_key
        Column of ``reference.obs`` with the donor/batch (``method="nb"`` only).
    layer
        Layer of ``reference`` holding raw counts (default ``X``).
    cell_type_map
        For a profiles DataFrame: a mapping column -> cell type; columns of one type are averaged.
    min_cells
        Cell types with fewer cells after QC are dropped with a warning.
    max_mito_pct
        Cell QC (METHOD.md): cells with at least this percentage of mitochondrial counts are
        dropped; ``None`` switches the filter off.
    min_genes
        Cell QC: cells with fewer detected genes are dropped; ``None`` switches the filter off.
    max_genes
        Cell QC: cells with more detected genes (likely doublets) are dropped; ``None`` switches
        the filter off.
    min_cells_per_gene
        Genes detected in fewer cells are not used; a value below 1 is a fraction of the cells
        (the reference code's 200 cells of the 100,064-cell atlas is 0.002).
    n_iter
        Most Fisher-scoring rounds of ``method="nb"``.
    device
        Torch device of ``method="nb"``: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    gene_symbols
        ``var`` column with the gene names to match against the reference, when ``var_names``
        are other IDs (e.g. Ensembl IDs with symbols in ``var["gene_symbols"]``).
    groups
        Coarse type of each prototype, for fine prototypes (cell states, ``celltype_minor``) that
        should be shown as coarse types: an ``obs`` column of the reference (each fine type takes
        its cells' most frequent value) or a mapping prototype -> coarse type. :func:`cpnn.tl.predict`
        then sums the weights per group into ``obsm["cpnn_proportions"]`` and keeps the fine ones
        in ``obsm["cpnn_proportions_fine"]``.
    rna_content
        For a profiles DataFrame: the mean total counts of a cell of each type (mapping cell type ->
        counts). Each profile is then scaled to sum to its type's value, so that compositions are
        fractions of cells; without it they are shares of the profiles' own scale (shares of
        counts for normalised profiles), and :func:`cpnn.pp.deconvolve` says so. An AnnData
        reference gives it itself (``method="nb"``).
    table_key
        Key of the table when ``data`` is a SpatialData.
    key_added
        Key in ``varm`` for the prototypes.
    copy
        Return a copy instead of writing into ``data``.

    Returns
    -------
    ``None``, or a copy of ``data`` with ``copy=True``. Writes ``varm[key_added]`` (genes x K,
    non-negative, 0 for genes without a prototype), removes genes without a prototype from
    ``var["cpnn_selected"]`` when a panel exists, and stores the cell types, gene coverage and the
    estimator's parameters (with ``units``: ``"cells"`` when each prototype is an average cell of
    its type, and ``rna_content``, the counts of such a cell) in
    ``uns["cpnn"]["prototype_sets"][key_added]`` and
    ``var["cpnn_in_reference"]`` (``var[f"{key_added}_in_reference"]`` for other keys). For the
    default key they also go to ``uns["cpnn"]["cell_types"]`` and ``uns["cpnn"]["prototypes"]``;
    other keys let several prototype sets coexist (pass the key to :func:`cpnn.tl.fit` as
    ``prototypes_key``).
    """
    start = logg.info(f"building cell-type prototypes ({method if isinstance(reference, AnnData) else 'profiles'})")
    target = get_table(data, table_key)
    if target.n_vars == 0:
        raise CpnnError(f"The table {table_key!r} has no genes.")
    if target.var_names.has_duplicates:
        raise CpnnError("The table's var_names have duplicates; call var_names_make_unique() first.")
    names = gene_names(target, gene_symbols)
    if isinstance(reference, pd.DataFrame):
        if reference.shape[1] < 2:
            raise CpnnError(
                f"reference (profiles) has {reference.shape[1]} column(s); cpnn needs at least two cell types."
            )
        profiles, info = _profiles_prototypes(reference, cell_type_map, rna_content)
        info["method"] = "profiles"
    elif isinstance(reference, AnnData):
        if rna_content is not None:
            raise CpnnError(
                "rna_content is for a profiles DataFrame: with an AnnData reference each type's RNA content is the mean "
                "total counts of its cells, estimated here. Drop rna_content=."
            )
        if reference.n_obs == 0 or reference.n_vars == 0:
            raise CpnnError(f"reference is empty ({reference.n_obs} x {reference.n_vars}).")
        profiles, info = _single_cell_prototypes(
            reference,
            cell_type_key=cell_type_key,
            method=method,
            batch_key=batch_key,
            layer=layer,
            genes=pd.Index(names.unique()),
            min_cells=min_cells,
            qc={
                "max_mito_pct": max_mito_pct,
                "min_genes": min_genes,
                "max_genes": max_genes,
                "min_cells_per_gene": min_cells_per_gene,
            },
            n_iter=n_iter,
            device=device,
        )
        info.update(method=method, cell_type_key=cell_type_key, batch_key=batch_key)
    else:
        raise CpnnError(
            f"reference must be an AnnData of labelled cells or a genes x cell-types DataFrame, got {type(reference).__name__}."
        )

    group_map = _groups(reference, groups, cell_type_key, list(profiles.columns))
    # a "/" in a name cannot be written to zarr (SpatialData.write), where names become keys
    renamed = {str(c): str(c).replace("/", "-") for c in profiles.columns if "/" in str(c)}
    if renamed:
        logg.warning(f"cell type names with '/' are stored with '-' instead (zarr keys cannot hold '/'): {renamed}")
        profiles = profiles.rename(columns=renamed)
        if group_map:
            group_map = {renamed.get(k, k): v.replace("/", "-") for k, v in group_map.items()}
    profiles = profiles.loc[profiles.index.intersection(names, sort=False)]
    in_ref = names.isin(profiles.index)
    if not in_ref.any():
        raise CpnnError(
            "No gene of the table has a prototype: the reference and the table share no gene. "
            f"Reference genes look like {list(profiles.index[:3]) or list(reference.index[:3]) if isinstance(reference, pd.DataFrame) else ''}, "
            f"table genes like {list(names[:3])}; match the naming (symbols vs Ensembl IDs, or pass "
            "gene_symbols=<var column>)."
        )
    # validation passed: write
    data = return_copy(data, copy)
    adata = get_table(data, table_key)
    values = np.zeros((adata.n_vars, profiles.shape[1]), dtype=np.float32)
    values[in_ref] = profiles.reindex(names[in_ref]).to_numpy(np.float32)
    missing = adata.var_names[~in_ref]
    if SELECTED in adata.var:
        sel = adata.var[SELECTED].to_numpy(bool)
        lost = adata.var_names[sel & ~in_ref]
        if len(lost):
            logg.warning(
                f"{len(lost)} of {int(sel.sum())} panel genes have no prototype and leave the panel, e.g. {list(lost[:5])}"
            )
        if int((sel & in_ref).sum()) < MIN_PANEL_GENES:
            raise CpnnError(
                f"Only {int((sel & in_ref).sum())} genes of the selected panel have a prototype (at least "
                f"{MIN_PANEL_GENES} are needed); choose a panel shared with the reference."
            )
        adata.var[SELECTED] = sel & in_ref
    adata.varm[key_added] = values
    cp_uns = uns_cpnn(adata)
    cell_types = [str(c) for c in profiles.columns]
    info.update(
        key=key_added, n_genes=int(in_ref.sum()), n_genes_missing=len(missing), missing_examples=list(missing[:10])
    )
    # every prototype set keeps its own cell types and gene coverage, so several can coexist
    sets = cp_uns.setdefault("prototype_sets", {})
    sets[key_added] = to_uns({**info, "cell_types": cell_types, **({"groups": group_map} if group_map else {})})
    adata.var[in_reference_column(key_added)] = in_ref
    if key_added == DEFAULT_KEY:
        cp_uns["cell_types"] = cell_types
        cp_uns["prototypes"] = to_uns(info)
    logg.info(
        f"    {profiles.shape[1]} cell types x {int(in_ref.sum())} genes ({len(missing)} table genes not in the reference)",
        time=start,
        deep=f"added\n    {key_added!r}, prototypes (adata.varm)\n    'prototype_sets' (adata.uns['cpnn'])",
    )
    return data if copy else None
