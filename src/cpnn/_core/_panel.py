"""The table accessors every layer reads: panel genes, prototypes, counts, reference compositions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._errors import CpnnError
from ._keys import SELECTED, UNEXPLAINED, in_reference_column, predicted_column
from ._stats import counts_dtype
from ._table import uns_cpnn, uns_list
from ._validate import check_counts, check_unique_var


def dense_rows(X: Any, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """Rows (and columns) of a dense or sparse matrix as a dense float array."""
    block = X[rows] if cols is None else X[rows][:, cols]
    return block.toarray() if sparse.issparse(block) else np.asarray(block)


def panel_genes(adata: AnnData) -> list[str]:
    """Genes of ``var["cpnn_selected"]``."""
    check_unique_var(adata)
    if SELECTED not in adata.var:
        raise CpnnError("No gene panel yet: call cp.pp.select_genes(data) first (it sets var['cpnn_selected']).")
    genes = adata.var_names[adata.var[SELECTED].to_numpy(bool)]
    if len(genes) == 0:
        raise CpnnError("var['cpnn_selected'] selects no gene; call cp.pp.select_genes with a non-empty panel.")
    return list(genes)


def prototype_set(adata: AnnData, key: str) -> dict:
    """The record of the prototype set ``varm[key]`` in ``uns["cpnn"]["prototype_sets"]`` (empty when absent)."""
    entry = uns_cpnn(adata).get("prototype_sets", {}).get(key)
    return entry if isinstance(entry, dict) else {}


def prototype_groups(adata: AnnData, key: str) -> dict[str, str]:
    """The display group of each prototype of ``varm[key]`` (empty when the prototypes are not grouped)."""
    groups = prototype_set(adata, key).get("groups")
    return {str(k): str(v) for k, v in groups.items()} if isinstance(groups, dict) else {}


def panel_prototypes(adata: AnnData, genes: list[str], key: str) -> tuple[np.ndarray, list[str]]:
    """Prototypes of the panel genes (K x G) and the cell types."""
    if key not in adata.varm:
        raise CpnnError(
            f"No prototypes in varm[{key!r}]: call cp.pp.build_prototypes(data, reference, ...) first, "
            "or pass head='direct' for the baseline without cell types."
        )
    info = uns_cpnn(adata)
    entry = info.get("prototype_sets", {}).get(key)
    # older objects (or hand-made prototypes) keep the default key's cell types at the top level
    types = uns_list(entry["cell_types"] if entry is not None else info.get("cell_types"))
    column = in_reference_column(key)
    in_ref = adata.var[column].to_numpy(bool) if column in adata.var else None
    P = np.asarray(adata.varm[key], dtype=np.float32)
    if P.ndim != 2 or P.shape[1] != len(types):
        raise CpnnError(
            f"varm[{key!r}] has {P.shape[1] if P.ndim == 2 else P.shape} columns but its record in uns['cpnn'] "
            f"names {len(types)} cell types; rebuild the prototypes with cp.pp.build_prototypes."
        )
    if len(types) < 2:
        raise CpnnError(
            f"varm[{key!r}] holds {len(types)} cell type; a composition needs at least two. Build the prototypes "
            "from a reference with several cell types (cp.pp.build_prototypes), or use head='direct'."
        )
    idx = adata.var_names.get_indexer(genes)
    sub = P[idx]
    if in_ref is not None:
        lacking = [g for g, ok in zip(genes, in_ref[idx], strict=True) if not ok]
    else:
        lacking = [g for g, row in zip(genes, sub, strict=True) if not row.any()]
    if lacking:
        raise CpnnError(
            f"Panel/prototype mismatch: {len(lacking)} selected genes have no prototype (e.g. {lacking[:5]}); "
            "run cp.pp.build_prototypes after cp.pp.select_genes, which drops such genes from the panel."
        )
    if not np.isfinite(sub).all() or (sub < 0).any():
        raise CpnnError(f"varm[{key!r}] holds NaN, infinite or negative values; rebuild the prototypes.")
    return sub.T.copy(), types


def layer_matrix(adata: AnnData, layer: str | None, *, argument: str = "layer") -> Any:
    """``adata.layers[layer]`` (``X`` for ``None``), or a clear error naming the layers."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise CpnnError(f"{argument}={layer!r} is not a layer of the table; layers are {list(adata.layers)}.")
    return adata.layers[layer]


def panel_counts(
    adata: AnnData, genes: list[str], mask: np.ndarray, layer: str | None, *, argument: str, integer: bool = False
) -> np.ndarray:
    """Dense raw counts of the panel genes for the ``mask`` spots, validated.

    With ``integer`` the counts must be whole numbers (what a negative-binomial loss models).
    """
    X = layer_matrix(adata, layer)
    block = dense_rows(X, np.flatnonzero(mask), adata.var_names.get_indexer(genes))
    where = f"the counts of the {argument} spots ({'X' if layer is None else 'layer ' + repr(layer)})"
    check_counts(block, argument=where, integer=False)
    if integer and block.size and not np.allclose(block, np.round(block)):
        raise CpnnError(
            f"{where} are not whole numbers, but loss='nb' models raw counts: pass the raw counts "
            "(layer= naming them), or loss='mse' for normalised values."
        )
    return block.astype(counts_dtype(block))  # float32 unless a count is beyond its exact whole numbers


def reference_composition(adata: AnnData, key: str | None, mask: np.ndarray, types: list[str]) -> np.ndarray | None:
    """Reference proportions from ``obsm[key]`` aligned to ``types`` (rows renormalised)."""
    if key is None:
        return None
    if key not in adata.obsm:
        raise CpnnError(
            f"composition_key={key!r} is not in obsm; keys are {list(adata.obsm)}. Compute targets with "
            "cp.pp.deconvolve(data, regions=<training sections>)."
        )
    comp = adata.obsm[key]
    fine = adata.obsm.get(f"{key}_fine")
    if isinstance(comp, pd.DataFrame) and isinstance(fine, pd.DataFrame) and not set(types) <= set(comp.columns):
        comp = fine  # grouped prototypes: the model's types are the fine ones
    if not isinstance(comp, pd.DataFrame):
        raise CpnnError(f"obsm[{key!r}] must be a DataFrame whose columns are cell types {types}.")
    missing = [t for t in types if t not in comp.columns]
    if missing == [UNEXPLAINED]:
        raise CpnnError(
            f"obsm[{key!r}] has no {UNEXPLAINED!r} column, but the fit has an unexplained component: make the targets "
            f"with cp.pp.deconvolve(..., unexplained='flat'), or leave composition_key= out (fit then makes them)."
        )
    if missing:
        raise CpnnError(f"obsm[{key!r}] lacks the cell types {missing}; its columns are {list(comp.columns)}.")
    values = comp[types].to_numpy(np.float32)[mask]
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).any(1).sum())
        raise CpnnError(
            f"obsm[{key!r}] has no composition for {bad} training spots (NaN); deconvolve every training spot "
            "(cp.pp.deconvolve(data, regions=<training sections>)), or leave those spots out of train=."
        )
    return values / np.clip(values.sum(1, keepdims=True), 1e-12, None)


def model_column(key_added: str) -> str:
    """``obs`` column naming, per spot, the model whose prediction ``key_added`` holds."""
    return f"{key_added}_model"


def prediction_models(adata: AnnData, layer: str, mask: np.ndarray | None = None) -> dict[str, dict]:
    """The records of the models whose predictions ``layer`` holds for the ``mask`` spots (empty if unrecorded)."""
    record = uns_cpnn(adata).get("predictions", {}).get(layer)
    col = model_column(layer)
    if not isinstance(record, dict) or col not in adata.obs:
        return {}
    ids = adata.obs[col]
    ids = ids[mask] if mask is not None else ids
    used = [str(i) for i in pd.unique(ids.dropna().astype(str))]
    return {i: record["models"][i] for i in used if i in record.get("models", {})}


def predicted_genes(adata: AnnData, layer: str, mask: np.ndarray | None, genes: list[str] | None) -> list[str] | None:
    """The genes to evaluate in ``layer`` for the ``mask`` spots, refusing a mixture of gene panels.

    Without ``genes``: the panel of the model(s) that predicted those spots, which must agree;
    with ``genes``: checked to be predicted for every one of them. Layers without a record (written
    by hand) fall back to :func:`predicted_panel`.
    """
    models = prediction_models(adata, layer, mask)
    if not models:
        return genes if genes is not None else predicted_panel(adata, layer)
    panels = {mid: list(m["genes"]) for mid, m in models.items()}
    if genes is None:
        distinct = {tuple(p) for p in panels.values()}
        if len(distinct) > 1:
            sizes = ", ".join(f"model {mid} ({len(p)} genes)" for mid, p in panels.items())
            raise CpnnError(
                f"layer {layer!r} holds predictions of {len(panels)} models with different gene panels ({sizes}) "
                f"for the selected spots (obs[{model_column(layer)!r}] names each spot's model). Evaluate them "
                "apart with spots=, pass genes= that every model predicted, or predict into separate key_added."
            )
        return next(iter(panels.values()))
    for mid, panel in panels.items():
        lacking = [g for g in genes if g not in set(panel)]
        if lacking:
            raise CpnnError(
                f"genes: {len(lacking)} were not predicted by model {mid} for some of the selected spots "
                f"(e.g. {lacking[:5]}); pass genes that every model in layer {layer!r} predicted, or spots=."
            )
    return genes


def predicted_panel(adata: AnnData, layer: str) -> list[str] | None:
    """The genes predicted into ``layer`` (as recorded by predict), else the selected panel, else ``None``."""
    info = uns_cpnn(adata).get("predict", {})
    genes = uns_list(info.get("genes"))
    if info.get("key_added") == layer and genes:
        return genes
    if SELECTED in adata.var:
        return list(adata.var_names[adata.var[SELECTED].to_numpy(bool)])
    return None


def predicted_mask(adata: AnnData, key_added: str) -> np.ndarray | None:
    """Spots covered by the prediction ``key_added`` (``None`` when no prediction marks them)."""
    col = predicted_column(key_added)
    return adata.obs[col].to_numpy(bool) if col in adata.obs else None


#: A cell type counts as marked in a panel when it holds at least this share of some panel gene's prototype expression.
MARKER_SHARE = 0.4
#: A cell type counts as switched off when its weight never exceeds this share.
OFF_SHARE = 0.01


def unmarked_types(prototypes: np.ndarray, types: list[str], *, share: float = MARKER_SHARE) -> list[str]:
    """Cell types without a gene of the panel they dominate (prototypes K x G): weights that cannot be told apart."""
    P = np.asarray(prototypes, dtype=np.float64)
    split = P / np.clip(P.sum(0, keepdims=True), 1e-300, None)
    return [t for t, best in zip(types, split.max(1), strict=True) if best < share]


def switched_off(weights: np.ndarray, types: list[str], *, share: float = OFF_SHARE) -> list[str]:
    """Cell types whose weight stays below ``share`` in every row of ``weights`` (N x K).

    The unexplained component is not a cell type: little weight on it is good news, never reported.
    """
    top = np.nanmax(np.asarray(weights, dtype=np.float64), axis=0) if len(weights) else np.zeros(len(types))
    return [t for t, m in zip(types, top, strict=True) if m < share and t != UNEXPLAINED]
