"""Gathering what fit and predict need from the table: panel, prototypes, counts, embeddings."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._core import check_counts, is_spatialdata, selection_positions, uns_cpnn
from .._errors import CpnnError
from ..pp._embed import build_encoder, cached_embedding, embed_spots, store_embedding
from ..pp._prototypes import in_reference_column


def panel_genes(adata: AnnData) -> list[str]:
    """Genes of ``var["cpnn_selected"]``."""
    if "cpnn_selected" not in adata.var:
        raise CpnnError("No gene panel yet: call cp.pp.select_genes(data) first (it sets var['cpnn_selected']).")
    genes = adata.var_names[adata.var["cpnn_selected"].to_numpy(bool)]
    if len(genes) == 0:
        raise CpnnError("var['cpnn_selected'] selects no gene; call cp.pp.select_genes with a non-empty panel.")
    return list(genes)


def prototype_groups(adata: AnnData, key: str) -> dict[str, str]:
    """The display group of each prototype of ``varm[key]`` (empty when the prototypes are not grouped)."""
    entry = uns_cpnn(adata).get("prototype_sets", {}).get(key) or {}
    groups = entry.get("groups")
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
    types = [str(t) for t in (entry["cell_types"] if entry is not None else info.get("cell_types", []))]
    column = in_reference_column(key)
    in_ref = adata.var[column].to_numpy(bool) if column in adata.var else None
    P = np.asarray(adata.varm[key], dtype=np.float32)
    if P.shape[1] != len(types):
        raise CpnnError(
            f"varm[{key!r}] has {P.shape[1]} columns but its record in uns['cpnn'] names {len(types)} cell types; "
            "rebuild the prototypes with cp.pp.build_prototypes."
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


def panel_counts(adata: AnnData, genes: list[str], mask: np.ndarray, layer: str | None, *, argument: str) -> np.ndarray:
    """Dense raw counts of the panel genes for the ``mask`` spots, validated."""
    if layer is not None and layer not in adata.layers:
        raise CpnnError(f"layer={layer!r} is not a layer of the table; layers are {list(adata.layers)}.")
    X = adata.layers[layer] if layer is not None else adata.X
    idx = adata.var_names.get_indexer(genes)
    block = X[np.flatnonzero(mask)][:, idx]
    block = block.toarray() if sparse.issparse(block) else np.asarray(block)
    check_counts(
        block,
        argument=f"the counts of the {argument} spots ({'X' if layer is None else 'layer ' + repr(layer)})",
        integer=False,
    )
    return block.astype(np.float32)


def reference_composition(adata: AnnData, key: str | None, mask: np.ndarray, types: list[str]) -> np.ndarray | None:
    """Reference proportions from ``obsm[key]`` aligned to ``types`` (rows renormalised)."""
    if key is None:
        return None
    if key not in adata.obsm:
        raise CpnnError(f"composition_key={key!r} is not in obsm; keys are {list(adata.obsm)}.")
    comp = adata.obsm[key]
    if not isinstance(comp, pd.DataFrame):
        raise CpnnError(f"obsm[{key!r}] must be a DataFrame whose columns are cell types {types}.")
    missing = [t for t in types if t not in comp.columns]
    if missing:
        raise CpnnError(f"obsm[{key!r}] lacks the cell types {missing}; its columns are {list(comp.columns)}.")
    values = comp[types].to_numpy(np.float32)[mask]
    if not np.isfinite(values).all():
        raise CpnnError(f"obsm[{key!r}] has NaN values for selected spots.")
    return values / np.clip(values.sum(1, keepdims=True), 1e-12, None)


def spot_embeddings(
    data: Any,
    adata: AnnData,
    mask: np.ndarray,
    config: dict,
    encoder,
    *,
    device: str,
    batch_size: int,
    num_workers: int,
    image_key: str | None,
    spot_diameter_um: float | None,
    key: str = "cpnn_embedding",
) -> np.ndarray:
    """Embeddings of the ``mask`` spots: from the ``obsm[key]`` cache when its config matches, else computed."""
    z = cached_embedding(adata, mask, config, key)
    if z is not None:
        return z
    if not is_spatialdata(data):
        raise CpnnError(
            "The table has no cached embedding for this encoder and there is no image to compute one: "
            "pass the SpatialData (with its images), or run cp.pp.embed on it first."
        )
    z = embed_spots(
        data,
        adata,
        mask,
        encoder if encoder is not None else build_encoder(config),
        patch_size_um=config["patch_size_um"],
        patch_px=config["patch_px"],
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        image_key=image_key,
        spot_diameter_um=spot_diameter_um,
    )
    store_embedding(adata, z, mask, config, key)
    return z


def finetuned_config(config: dict) -> dict:
    """An encoder config that marks fine-tuned weights, so cached embeddings never mix them up."""
    return {**config, "finetuned": uuid.uuid4().hex}


def spot_coordinates_um(
    data: Any, adata: AnnData, mask: np.ndarray, *, image_key: str | None, spot_diameter_um: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y) in micrometres and the region of the ``mask`` spots (neighbours never cross regions)."""
    from ..data import region_images, table_regions

    n = int(mask.sum())
    xy, label = np.zeros((n, 2)), np.empty(n, dtype=object)
    where = selection_positions(mask)
    if is_spatialdata(data) and len(data.images):
        for r in region_images(data, adata, mask, image_key=image_key, spot_diameter_um=spot_diameter_um):
            xy[where[r.obs_index]] = r.centers_px * r.um_per_px
            label[where[r.obs_index]] = r.region
        return xy, label
    _, region_key, _ = table_regions(adata)
    scale = adata.uns.get("cpnn_spatial", {}).get("um_per_px", {})
    regions = adata.obs[region_key].astype(str).to_numpy()[mask]
    if "spatial" not in adata.obsm or not set(regions) <= set(scale):
        raise CpnnError(
            "context_um needs the spots' positions in micrometres: pass the SpatialData (with images), keep "
            "obsm['spatial'] and uns['cpnn_spatial']['um_per_px'][region] in the table, or pass context_um=0."
        )
    coords = np.asarray(adata.obsm["spatial"], float)[mask]
    return coords * np.array([float(scale[r]) for r in regions])[:, None], regions


def add_context(z: np.ndarray, xy: np.ndarray, label: np.ndarray, radius_um: float) -> np.ndarray:
    """``[z, mean of z over the spots within radius_um of each spot (itself included), same region]``."""
    from scipy.spatial import cKDTree

    ctx = np.empty_like(z)
    label = label.astype(str)
    for lab in np.unique(label):
        idx = np.flatnonzero(label == lab)
        pairs = cKDTree(xy[idx]).query_pairs(radius_um, output_type="ndarray")
        rows = np.r_[pairs[:, 0], pairs[:, 1], np.arange(len(idx))]
        cols = np.r_[pairs[:, 1], pairs[:, 0], np.arange(len(idx))]
        a = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(idx), len(idx)))
        a = sparse.diags(1.0 / np.asarray(a.sum(1)).ravel()) @ a
        ctx[idx] = a @ z[idx]
    return np.concatenate([z, ctx], axis=1).astype(np.float32)


def model_inputs(
    data: Any,
    adata: AnnData,
    mask: np.ndarray,
    config: dict,
    encoder: Any,
    *,
    context_um: float | None,
    device: str,
    batch_size: int,
    num_workers: int,
    image_key: str | None,
    spot_diameter_um: float | None,
    key: str,
) -> np.ndarray:
    """Embeddings of the ``mask`` spots, with their neighbourhood's mean appended when ``context_um`` is set.

    The neighbourhood is every spot of the same region within ``context_um`` micrometres, whether
    or not it is selected (images only; no counts are used).
    """
    kw = {
        "device": device,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "image_key": image_key,
        "spot_diameter_um": spot_diameter_um,
        "key": key,
    }
    if not context_um:
        return spot_embeddings(data, adata, mask, config, encoder, **kw)
    from ..data import table_regions

    _, region_key, _ = table_regions(adata)
    regions = adata.obs[region_key].astype(str)
    around = regions.isin(set(regions[mask])).to_numpy()
    z = spot_embeddings(data, adata, around, config, encoder, **kw)
    xy, label = spot_coordinates_um(data, adata, around, image_key=image_key, spot_diameter_um=spot_diameter_um)
    return add_context(z, xy, label, float(context_um))[mask[around]]
