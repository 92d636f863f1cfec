"""cp.pl.proportions: the composition weights of each cell type, as coloured spots over the H&E."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._core import get_proportions, get_table
from .._errors import CpnnError
from ._spatial import draw_spots, resolve_region
from ._utils import check_names, finish


def proportions(
    data: Any,
    *,
    cell_types: str | Sequence[str] | None = None,
    region: str | None = None,
    key: str = "cpnn_proportions",
    ncols: int = 4,
    cmap: str = "viridis",
    vmax: float | None = None,
    img_alpha: float | None = None,
    image_key: str | None = None,
    max_px: int = 1500,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
    table_key: str = "table",
) -> Figure | Axes:
    """Composition maps: one panel per cell type, spot proportions over the H&E of one region.

    Drawn by :func:`squidpy.pl.spatial_scatter` on a small view holding a cropped, downsampled
    copy of the image (a pyramid level when the image has one); the full-resolution image is never
    loaded and ``data`` is not modified.

    Parameters
    ----------
    data
        SpatialData with images (spots over the H&E), or an AnnData (spots only, from
        ``obsm["spatial"]``) with ``obsm[key]`` from :func:`cpnn.tl.predict`.
    cell_types
        Cell types to draw (default all).
    region
        Region or section to draw (default the first one with predictions).
    key
        ``obsm`` key of the proportions (a DataFrame whose columns are the cell types).
    ncols
        Panels per row.
    cmap, vmax
        Colour map, and the top of the colour scale (default: each panel's own maximum).
    img_alpha
        Opacity of the H&E.
    image_key
        Force this image element.
    max_px
        Longer side of the image drawn behind the spots, in pixels.
    figsize, ax, save
        Figure size, an Axes to draw one cell type into, and a path to save the figure to.
    table_key
        Key of the table.

    Returns
    -------
    The Figure, or ``ax`` when one was passed.
    """
    adata = get_table(data, table_key)
    props = get_proportions(adata, key)
    types = check_names(cell_types, list(props.columns), argument="cell_types", what="cell type")
    has = props.notna().all(axis=1).to_numpy()
    name, mask = resolve_region(adata, region, prefer=has)
    mask = mask & has
    if not mask.any():
        raise CpnnError(
            f"Region {name!r} has no predicted proportions; predict it with cp.tl.predict(..., regions=...)."
        )
    values = props.loc[:, types]
    fig = draw_spots(
        data,
        values,
        mask,
        region=name,
        titles=[f"{t} ({name})" for t in types],
        colorbar_label="proportion",
        ncols=ncols,
        cmap=cmap,
        vmin=0.0,
        vmax=vmax,
        img_alpha=img_alpha,
        image_key=image_key,
        max_px=max_px,
        figsize=figsize,
        ax=ax,
        table_key=table_key,
    )
    return finish(fig, ax, save)
