"""Spatial context: each spot's embedding next to the mean embedding of its neighbourhood."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse
from scipy.spatial import cKDTree

from .._core import SPATIAL, is_spatialdata, selection_positions
from .._errors import CpnnError
from ._regions import region_images, table_regions


def spot_coordinates_um(
    data: Any, adata: AnnData, mask: np.ndarray, *, image_key: str | None, spot_diameter_um: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y) in micrometres and the region of the ``mask`` spots (neighbours never cross regions)."""
    n = int(mask.sum())
    xy, label = np.zeros((n, 2)), np.empty(n, dtype=object)
    where = selection_positions(mask)
    if is_spatialdata(data) and len(data.images):
        for r in region_images(data, adata, mask, image_key=image_key, spot_diameter_um=spot_diameter_um):
            xy[where[r.obs_index]] = r.centers_px * r.um_per_px
            label[where[r.obs_index]] = r.region
        return xy, label
    _, region_key, _ = table_regions(adata)
    scale = adata.uns.get(SPATIAL, {}).get("um_per_px", {})
    regions = adata.obs[region_key].astype(str).to_numpy()[mask]
    if "spatial" not in adata.obsm or not set(regions) <= set(scale):
        raise CpnnError(
            "context_um needs the spots' positions in micrometres: pass the SpatialData (with images), keep "
            "obsm['spatial'] and uns['cpnn_spatial']['um_per_px'][region] in the table, or pass data_kwargs={'context_um': 0} to cp.tl.fit."
        )
    coords = np.asarray(adata.obsm["spatial"], float)[mask]
    return coords * np.array([float(scale[r]) for r in regions])[:, None], regions


def add_context(z: np.ndarray, xy: np.ndarray, label: np.ndarray, radius_um: float) -> np.ndarray:
    """``[z, mean of z over the spots within radius_um of each spot (itself included), same region]``."""
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
