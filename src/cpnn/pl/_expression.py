"""cp.pl.expression: measured and predicted expression side by side over the H&E."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .._core import (
    PREDICTION,
    columnwise_spearman,
    dense_rows,
    gene_names,
    get_table,
    lognorm,
    near_constant,
    predicted_genes,
    predicted_mask,
)
from .._errors import CpnnError
from ._spatial import draw_spots, resolve_region
from ._utils import check_names, doc_show_save, finish

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from anndata import AnnData
    from spatialdata import SpatialData


@doc_show_save
def expression(
    data: AnnData | SpatialData,
    genes: str | Sequence[str],
    *,
    region: str | None = None,
    layer: str = PREDICTION,
    gene_symbols: str | None = None,
    cmap: str = "magma",
    img_alpha: float | None = None,
    image_key: str | None = None,
    max_px: int = 1500,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
    table_key: str = "table",
) -> Figure | list | None:
    """Measured vs predicted expression of ``genes`` over the H&E, one row per gene.

    Both sides are log1p of counts per 10,000 over the predicted panel, as in
    :func:`cpnn.tl.evaluate`, drawn on one colour scale per gene (so a brighter spot means more
    expression on either side); the title of each predicted panel gives the gene's Spearman
    correlation over the region's spots.

    Parameters
    ----------
    data
        SpatialData with images, or an AnnData with ``obsm["spatial"]``.
    genes
        Genes of the predicted panel.
    region
        Region or section to draw (default the first one with predictions).
    layer
        Layer with the predictions (:func:`cpnn.tl.predict`'s ``key_added``).
    gene_symbols
        ``var`` column holding the names ``genes`` uses (e.g. symbols when ``var_names`` are
        Ensembl IDs); titles show these names.
    cmap
        Matplotlib colour map.
    img_alpha
        Opacity of the H&E behind the spots.
    image_key
        Force this image element (default: the sharpest image covering the spots).
    max_px
        Longer side of the image drawn behind the spots, in pixels.
    figsize
        Figure size.
    {show_save}

    Returns
    -------
    ``None``, the Axes (``show=False``) or the Figure (``return_fig=True``).
    """
    adata = get_table(data, table_key)
    if layer not in adata.layers:
        raise CpnnError(
            f"layer={layer!r} is not a layer of the table; run cp.tl.predict first. Layers: {list(adata.layers)}."
        )
    predicted = predicted_mask(adata, layer)
    name, mask = resolve_region(adata, region, prefer=predicted)
    if predicted is not None:
        mask = mask & predicted
    if mask.sum() < 3:
        raise CpnnError(
            f"Region {name!r} has {int(mask.sum())} predicted spot(s); the per-gene Spearman correlation this plot "
            "reports needs at least 3. Predict more of the region with cp.tl.predict, or pick another region=."
        )
    panel = predicted_genes(adata, layer, mask, None)
    if not panel:
        raise CpnnError("No predicted panel is recorded in the table; run cp.pp.select_genes and cp.tl.predict.")
    names = gene_names(adata, gene_symbols)
    shown = dict(zip(adata.var_names, names, strict=True))
    by_name = {shown[g]: g for g in panel}
    genes = [by_name[g] for g in check_names(genes, list(by_name), argument="genes", what="gene")]
    cols = adata.var_names.get_indexer(panel)
    rows = np.flatnonzero(mask)

    truth = lognorm(dense_rows(adata.X, rows, cols).astype(float))
    pred = lognorm(dense_rows(adata.layers[layer], rows, cols).astype(float))
    at = [panel.index(g) for g in genes]
    flat = near_constant(pred[:, at]) | near_constant(truth[:, at])  # rounding noise is no signal
    rho = np.where(flat, np.nan, columnwise_spearman(pred[:, at], truth[:, at]))
    values = pd.DataFrame(index=adata.obs_names, dtype=float)
    titles, lows, highs = [], [], []
    for k, (gene, j) in enumerate(zip(genes, at, strict=True)):
        g = shown[gene]
        m = np.full(adata.n_obs, np.nan)
        m[rows] = truth[:, j]
        p = np.full(adata.n_obs, np.nan)
        p[rows] = pred[:, j]
        values[f"measured {g}"] = m
        values[f"predicted {g}"] = p
        titles += [f"{g} measured ({name})", f"{g} predicted from H&E\nSpearman {rho[k]:.2f}"]
        both = np.r_[truth[:, j], pred[:, j]]
        lows += [float(both.min())] * 2
        highs += [float(both.max())] * 2
    fig = draw_spots(
        data,
        values,
        mask,
        region=name,
        titles=titles,
        colorbar_label="log1p CP10k",
        ncols=2,
        cmap=cmap,
        vmin=lows,
        vmax=highs,
        img_alpha=img_alpha,
        image_key=image_key,
        max_px=max_px,
        figsize=figsize,
        ax=None,
        table_key=table_key,
    )
    return finish(fig, None, name="expression", show=show, save=save, return_fig=return_fig)
