"""Spots over the H&E through squidpy: the legacy ``uns["spatial"]`` layout, built on the fly at low resolution."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core import get_table, is_spatialdata, is_tiles_table, region_columns
from .._errors import CpnnError
from ..data import image_levels, region_images, to_rgb_float

#: Margin around the spots when cropping the image, in spot diameters.
_MARGIN = 1.5


def resolve_region(adata: AnnData, region: str | None, *, prefer: np.ndarray | None = None) -> tuple[str, np.ndarray]:
    """One region (or section) of the table and the mask of its spots.

    ``region=None`` takes the first region holding a ``prefer`` spot (e.g. a predicted one).
    """
    cols = region_columns(adata)
    if not cols:
        if region is not None:
            raise CpnnError(f"region={region!r}, but the table has no region or section column.")
        return "all spots", np.ones(adata.n_obs, bool)
    col = cols[0]
    values = adata.obs[col].astype(str).to_numpy()
    names = list(dict.fromkeys(values))
    if region is None:
        pool = values[prefer] if prefer is not None and prefer.any() else values
        region = str(pool[0])
        return region, values == region
    for c in cols:
        v = adata.obs[c].astype(str).to_numpy()
        if region in set(v):
            mask = v == region
            sub = set(values[mask])
            if len(sub) != 1:
                raise CpnnError(f"region={region!r} spans several image regions {sorted(sub)}; name one of them.")
            return region, mask
    valid = sorted({*names, *(x for c in cols[1:] for x in adata.obs[c].astype(str))})
    raise CpnnError(f"region={region!r} is not a region of the table; valid regions: {valid}.")


def _lowres(
    data: Any, image_key: str, full_shape: tuple[int, int], max_px: int, scale: float
) -> tuple[np.ndarray, float]:
    """The image at about ``max_px`` on its longer side: a pyramid level when there is one, then strides."""
    levels = image_levels(data.images[image_key])  # finest first
    # the coarsest level still at least max_px on its longer side (else the finest)
    chosen = levels[0]
    for arr in levels:
        if max(arr.shape[-2:]) >= max_px:
            chosen = arr
    step = max(1, int(max(chosen.shape[-2:]) // max_px))
    sub = chosen[:, ::step, ::step]
    img = np.asarray(sub.data.compute() if hasattr(sub, "data") and hasattr(sub.data, "compute") else sub)
    factor = img.shape[-1] / full_shape[1]
    if img.dtype != np.uint8 or scale != 255.0:  # the range cpnn reads for patches
        img = to_rgb_float(img if img.shape[0] in (1, 3, 4) else img[:3], scale)
    img = np.moveaxis(img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, 0), 0, -1)
    return img, float(factor)


def spatial_view(
    data: Any,
    values: pd.DataFrame,
    mask: np.ndarray,
    *,
    library_id: str,
    image_key: str | None = None,
    max_px: int = 1500,
    table_key: str = "table",
) -> tuple[AnnData, dict]:
    """A small AnnData with ``values`` as obs columns, spot coordinates and a cropped low-res image.

    Returns the AnnData and the keyword arguments that make ``squidpy.pl.spatial_scatter`` draw it.
    """
    adata = get_table(data, table_key)
    obs = values.loc[adata.obs_names[mask]].copy()
    if is_spatialdata(data) and len(data.images):
        (reg,) = region_images(data, adata, mask, image_key=image_key)
        full = tuple(int(s) for s in reg.array.shape[-2:])
        img, scale = _lowres(data, reg.image_key, full, max_px, reg.scale)
        diameter = reg.spot_diameter_px or 100.0 / reg.um_per_px
        xy = np.empty((int(mask.sum()), 2))
        xy[np.searchsorted(np.flatnonzero(mask), reg.obs_index)] = reg.centers_px  # region order -> table order
        lo = np.floor((xy.min(0) - _MARGIN * diameter) * scale).clip(0).astype(int)
        hi = np.ceil((xy.max(0) + _MARGIN * diameter) * scale).astype(int)
        img = img[lo[1] : hi[1], lo[0] : hi[0]]
        xy = xy - lo / scale
        view = AnnData(obs=obs)
        view.obsm["spatial"] = xy
        view.uns["spatial"] = {
            library_id: {
                "images": {"hires": img},
                "scalefactors": {"tissue_hires_scalef": scale, "spot_diameter_fullres": diameter},
            }
        }
        shape = "square" if is_tiles_table(adata) else "circle"
        # squidpy draws in the low-resolution image's pixels: micrometres per such pixel, for the scale bar
        return view, {
            "library_id": [library_id],
            "img_res_key": "hires",
            "shape": shape,
            "um_per_unit": reg.um_per_px / scale,
        }
    if "spatial" not in adata.obsm:
        raise CpnnError("The table has no obsm['spatial'] spot coordinates and no image to place the spots on.")
    view = AnnData(obs=obs)
    view.obsm["spatial"] = np.asarray(adata.obsm["spatial"], float)[mask]
    return view, {"shape": None, "img": False}


def _per_panel(value: Any, n: int) -> list:
    if isinstance(value, list | tuple | np.ndarray):
        if len(value) != n:
            raise CpnnError(f"{len(value)} colour limits were given for {n} panels.")
        return list(value)
    return [value] * n


def add_scalebar(ax: Any, um_per_unit: float | None) -> None:
    """A micrometre scale bar in the lower left of a spatial panel (a round length near a fifth of its width)."""
    if not um_per_unit:
        return
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    x0, x1 = ax.get_xlim()
    width_um = abs(x1 - x0) * um_per_unit
    nice = [50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000]
    length = max([n for n in nice if n <= width_um / 5] or [nice[0]])
    label = f"{length // 1000} mm" if length >= 1000 and length % 1000 == 0 else f"{length} \u00b5m"
    bar = AnchoredSizeBar(
        ax.transData, length / um_per_unit, label, "lower left", pad=0.3, color="black", frameon=True, size_vertical=0
    )
    bar.patch.set_alpha(0.6)
    ax.add_artist(bar)


def draw_spots(
    data: Any,
    values: pd.DataFrame,
    mask: np.ndarray,
    *,
    region: str,
    titles: Sequence[str],
    colorbar_label: str | Sequence[str],
    ncols: int,
    cmap: str,
    vmin: float | Sequence | None,
    vmax: float | Sequence | None,
    img_alpha: float | None,
    image_key: str | None,
    max_px: int,
    figsize: tuple[float, float] | None,
    ax: Any,
    table_key: str,
    alpha: float = 1.0,
    suptitle: str | None = None,
    note: str | None = None,
    scalebar: bool = True,
):
    """Draw each column of ``values`` as coloured spots over the region's H&E; return the Figure.

    ``vmin``/``vmax``/``colorbar_label`` may be one value or one per panel; ``alpha`` is the spots'
    opacity (so the tissue shows through), ``note`` a line of text under the panels.
    """
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():  # docrep's invalid escapes, printed when squidpy is first compiled
        warnings.simplefilter("ignore", SyntaxWarning)
        import squidpy as sq

    view, kw = spatial_view(
        data, values, mask, library_id=region, image_key=image_key, max_px=max_px, table_key=table_key
    )
    um_per_unit = kw.pop("um_per_unit", None)
    cols = list(values.columns)
    if ax is None:
        n = len(cols)
        nc = min(ncols, n)
        nr = int(np.ceil(n / nc))
        if figsize is None:  # panels as tall as the region's image is, plus room for a title
            aspect = 0.85
            if "library_id" in kw:
                img = view.uns["spatial"][region]["images"]["hires"]
                aspect = float(np.clip(img.shape[0] / max(img.shape[1], 1), 0.3, 2.0))
            figsize = (4.2 * nc, (3.6 * aspect + 0.7) * nr)
        fig, axes = plt.subplots(nr, nc, figsize=figsize, squeeze=False)
        axes = axes.ravel()
        for extra in axes[n:]:
            extra.set_axis_off()
        axes = list(axes[:n])
    else:
        if len(cols) != 1:
            raise CpnnError(f"ax= draws one panel, but {len(cols)} were asked for; pass one name or leave ax=None.")
        fig, axes = ax.figure, [ax]
    lows, highs = _per_panel(vmin, len(cols)), _per_panel(vmax, len(cols))
    labels = _per_panel(colorbar_label, len(cols))
    # one scale for every panel of a grid: one colour bar for the figure, not one per panel
    shared = ax is None and len(cols) > 1 and len(set(lows)) == 1 and len(set(highs)) == 1 and len(set(labels)) == 1
    for col, a, title, lo, hi, label in zip(cols, axes, titles, lows, highs, labels, strict=True):
        before = set(fig.axes)
        with warnings.catch_warnings():  # squidpy's own use of matplotlib's soon-deprecated Colormap.set_bad
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module="squidpy")
            sq.pl.spatial_scatter(
                view,
                color=col,
                cmap=cmap,
                vmin=lo,
                vmax=hi,
                img_alpha=img_alpha,
                alpha=alpha,
                title=title,
                ax=a,
                fig=fig,
                frameon=False,
                **kw,
            )
        a.set_xlabel("")
        a.set_ylabel("")
        for cax in set(fig.axes) - before:  # the colour bar squidpy added for this panel
            cbar = getattr(cax, "_colorbar", None)
            if cbar is not None and shared:
                cax.remove()
            elif cbar is not None:
                cbar.set_label(label)
        if scalebar:
            add_scalebar(a, um_per_unit)
    if ax is None:  # margins in inches, so that a tall grid has no wide empty band above it
        h = fig.get_figheight()
        fig.subplots_adjust(top=1 - (0.9 if suptitle else 0.5) / h, bottom=0.4 / h)
    if shared:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        # one horizontal bar under the grid (margins in inches), clear of the panels' titles
        h = fig.get_figheight()
        fig.subplots_adjust(bottom=1.1 / h)
        cax = fig.add_axes((0.3, 0.55 / h, 0.4, 0.12 / h))
        fig.colorbar(
            ScalarMappable(Normalize(lows[0], highs[0]), cmap), cax=cax, orientation="horizontal", label=labels[0]
        )
    if suptitle:
        fig.suptitle(suptitle, y=1 - 0.15 / fig.get_figheight())
    if note:
        fig.text(0.01, 0.005, note, fontsize=8, ha="left", va="bottom", wrap=True)
    return fig
