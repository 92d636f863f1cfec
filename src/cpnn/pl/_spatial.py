"""Spots over the H&E through squidpy, on the legacy ``uns["spatial"]`` layout of spatialdata-io's ``to_legacy_anndata``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core import get_table, is_spatialdata, is_tiles_table, region_columns
from .._errors import CpnnError
from ..data import image_levels, region_images, to_rgb_float

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

#: Margin around the spots when cropping the image, in spot diameters.
_MARGIN = 1.5
#: How cpnn's maps place squidpy's scale bar (matplotlib-scalebar's keywords).
SCALEBAR_KWARGS = {"location": "lower left", "box_alpha": 0.6}
#: Scale-bar lengths a reader expects, in micrometres.
ROUND_UM = (10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000)


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


#: Longer sides of the legacy layout's "hires" and "lowres" images (spatialdata-io's ``to_legacy_anndata``).
HIRES_PX, LOWRES_PX = 2000, 600


def _box_resized(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """An RGB uint8 image (y, x, 3) resampled to ``width`` x ``height`` by averaging (box filter)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((width, height), Image.Resampling.BOX))


def _downscaled(data: Any, image_key: str, full_shape: tuple[int, int], max_px: int, scale: float) -> np.ndarray:
    """The whole image resampled so that its longer side is ``max_px`` (never upscaled): (y, x, 3) uint8.

    Reads the coarsest pyramid level still at least that large, every k-th pixel of it down to no
    less than the target, then averages the rest away (box filter), so no full-resolution array
    is held in memory.
    """
    height, width = full_shape
    factor = min(1.0, max_px / max(height, width))
    out = (max(1, round(width * factor)), max(1, round(height * factor)))  # PIL's (width, height)
    levels = image_levels(data.images[image_key])  # finest first
    chosen = levels[0]
    for arr in levels:
        if arr.shape[-1] >= out[0] and arr.shape[-2] >= out[1]:
            chosen = arr
    step = max(1, int(min(chosen.shape[-1] / out[0], chosen.shape[-2] / out[1])))
    sub = chosen[:, ::step, ::step]
    img = np.asarray(sub.data.compute() if hasattr(sub, "data") and hasattr(sub.data, "compute") else sub)
    if img.dtype != np.uint8 or scale != 255.0:  # the range cpnn reads for patches
        rgb = to_rgb_float(img if img.shape[0] in (1, 3, 4) else img[:3], scale)
        img = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    img = np.moveaxis(img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, 0), 0, -1)
    return _box_resized(img, *out)


@dataclass(frozen=True)
class Layout:
    """Where squidpy finds a legacy view's image: its library, the spots' shape and micrometres per pixel."""

    library_id: str | None
    shape: str | None
    um_per_px: float | None


def with_legacy_layout(
    data: Any,
    view: AnnData,
    mask: np.ndarray,
    *,
    image_key: str | None = None,
    max_px: int = HIRES_PX,
    table_key: str = "table",
) -> Layout:
    """Give ``view`` (the table's ``mask`` rows, in order) squidpy's legacy layout; return where it put it.

    The layout is spatialdata-io's ``to_legacy_anndata(..., include_images=True)``: the image,
    resampled to ``max_px`` on its longer side, in ``uns["spatial"][<image name>]["images"]``
    (``"hires"``, and ``"lowres"`` at 600 px), ``tissue_hires_scalef`` 1, and ``obsm["spatial"]`` and
    ``spot_diameter_fullres`` in the hires image's pixels.
    """
    adata = get_table(data, table_key)
    if is_spatialdata(data) and len(data.images):
        (reg,) = region_images(data, adata, mask, image_key=image_key)
        height, width = (int(s) for s in reg.array.shape[-2:])
        hires = _downscaled(data, reg.image_key, (height, width), max_px, reg.scale)
        fx, fy = hires.shape[1] / width, hires.shape[0] / height
        lowres_factor = min(1.0, LOWRES_PX / max(hires.shape[:2]))
        lowres = _box_resized(
            hires, max(1, round(hires.shape[1] * lowres_factor)), max(1, round(hires.shape[0] * lowres_factor))
        )
        xy = np.empty((int(mask.sum()), 2))
        xy[np.searchsorted(np.flatnonzero(mask), reg.obs_index)] = reg.centers_px  # region order -> table order
        view.obsm["spatial"] = xy * (fx, fy)
        diameter = reg.spot_diameter_px or 100.0 / reg.um_per_px
        factor = (fx + fy) / 2
        view.uns["spatial"] = {
            reg.image_key: {
                "images": {"hires": hires, "lowres": lowres},
                "scalefactors": {
                    "tissue_hires_scalef": 1.0,
                    "tissue_lowres_scalef": lowres_factor,
                    "spot_diameter_fullres": float(diameter * factor),
                },
            }
        }
        shape = "square" if is_tiles_table(adata) else "circle"
        return Layout(reg.image_key, shape, reg.um_per_px / factor)
    if "spatial" not in adata.obsm:
        raise CpnnError("The table has no obsm['spatial'] spot coordinates and no image to place the spots on.")
    view.obsm["spatial"] = np.asarray(adata.obsm["spatial"], float)[mask]
    library = _legacy_library(adata)
    if library is None:
        return Layout(None, None, None)
    # an AnnData already in the legacy layout (cp.pl.legacy_anndata, to_legacy_anndata, sc.read_visium):
    # its own image, coordinates taken to the hires image's pixels as above
    name, info = library
    factors = info["scalefactors"]
    s = float(factors.get("tissue_hires_scalef", 1.0))
    view.obsm["spatial"] = view.obsm["spatial"] * s
    diameter = float(factors.get("spot_diameter_fullres", 0.0))
    images = {"hires": np.asarray(info["images"]["hires"])}
    scalefactors = {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": diameter * s}
    if "lowres" in info["images"] and "tissue_lowres_scalef" in factors:
        images["lowres"] = np.asarray(info["images"]["lowres"])
        scalefactors["tissue_lowres_scalef"] = float(factors["tissue_lowres_scalef"]) / s
    view.uns["spatial"] = {name: {"images": images, "scalefactors": scalefactors}}
    um = adata.uns.get("cpnn_um_per_px")  # cp.pl.legacy_anndata's, per pixel of its coordinates
    spot_um = (adata.uns.get("cpnn_spatial") or {}).get("spot_diameter_um")
    um_per_px = float(um) / s if um else (float(spot_um) / (diameter * s) if spot_um and diameter else None)
    return Layout(name, "circle", um_per_px)


def _legacy_library(adata: AnnData) -> tuple[str, dict] | None:
    """The one library of an AnnData in squidpy's legacy layout with a hires image, or ``None``."""
    spatial = adata.uns.get("spatial")
    if not isinstance(spatial, dict) or len(spatial) != 1:
        return None
    name, info = next(iter(spatial.items()))
    ok = isinstance(info, dict) and "hires" in (info.get("images") or {}) and "scalefactors" in info
    return (str(name), info) if ok else None


def legacy_anndata(
    data: AnnData | SpatialData,
    *,
    region: str | None = None,
    image_key: str | None = None,
    max_px: int = HIRES_PX,
    table_key: str = "table",
) -> AnnData:
    """One region of the table as the legacy spatial AnnData squidpy's ``spatial_scatter`` draws.

    The same layout as ``spatialdata_io.experimental.to_legacy_anndata(sdata, coordinate_system=...,
    table_name=..., include_images=True)`` (spot coordinates and the H&E resampled to 2,000 px on
    its longer side, ``tissue_hires_scalef`` 1, a 600 px ``"lowres"`` image, the library named after
    the image), for one region (section) of a cpnn table: its rows with every ``obs`` column,
    ``obsm`` entry (``cpnn_proportions`` included) and layer. It needs no spatialdata-io, reads a
    pyramid level instead of rasterising the full image, and also works on a collection's tables
    and on tile tables (squares). Copy a composition into ``obs`` to colour by it::

        view = cp.pl.legacy_anndata(sdata, region="B4")
        view.obs["epithelial"] = view.obsm["cpnn_proportions"]["Cancer Epithelial"]
        sq.pl.spatial_scatter(view, color="epithelial", scalebar_dx=view.uns["cpnn_um_per_px"])

    Parameters
    ----------
    data
        SpatialData with the images, and the table.
    region
        Region or section (default: the first one).
    image_key
        Force this image element (default: the sharpest image covering the spots).
    max_px
        Longer side of the ``"hires"`` image, in pixels (2,000 as spatialdata-io).
    table_key
        Key of the table.

    Returns
    -------
    A new AnnData (the region's rows, copied); ``uns["cpnn_um_per_px"]`` is micrometres per pixel of
    its coordinates, the ``scalebar_dx`` that squidpy's scale bar needs.
    """
    adata = get_table(data, table_key)
    if not is_spatialdata(data) or not len(data.images):
        raise CpnnError(
            "legacy_anndata needs a SpatialData with the H&E images; an AnnData of spots draws without an image "
            "(sq.pl.spatial_scatter(adata, shape=None) reads obsm['spatial'])."
        )
    _, mask = resolve_region(adata, region)
    view = adata[mask].copy()
    layout = with_legacy_layout(data, view, mask, image_key=image_key, max_px=max_px, table_key=table_key)
    view.uns["cpnn_um_per_px"] = layout.um_per_px
    return view


def _per_panel(value: Any, n: int) -> list:
    if isinstance(value, list | tuple | np.ndarray):
        if len(value) != n:
            raise CpnnError(f"{len(value)} colour limits were given for {n} panels.")
        return list(value)
    return [value] * n


def crop_box(view: AnnData, library_id: str) -> tuple[int, int, int, int]:
    """The spots' extent plus a margin, in the hires image's pixels, as squidpy's ``crop_coord`` reads it.

    squidpy reads the tuple as (x0, y0, x1, y1) (its ``CropCoords``), whatever its docstring's order.
    """
    info = view.uns["spatial"][library_id]
    xy = np.asarray(view.obsm["spatial"])
    pad = _MARGIN * info["scalefactors"]["spot_diameter_fullres"]
    h, w = info["images"]["hires"].shape[:2]
    x0, y0 = np.floor(xy.min(0) - pad).clip(0)
    x1, y1 = np.ceil(xy.max(0) + pad)
    return int(x0), int(y0), int(min(x1, w)), int(min(y1, h))


def scalebar_kwargs(width_um: float) -> dict[str, Any]:
    """matplotlib-scalebar's keywords for a panel ``width_um`` wide: lower left, a round length near a fifth of it.

    matplotlib-scalebar alone picks lengths such as 750 um; a reader expects 500 um or 1 mm.
    """
    length = max([n for n in ROUND_UM if n <= width_um / 5] or [ROUND_UM[0]])
    value, units = (length // 1000, "mm") if length >= 1000 and length % 1000 == 0 else (length, "um")
    return {**SCALEBAR_KWARGS, "fixed_value": value, "fixed_units": units}


def scalebar(ax: Any, um_per_px: float | None) -> None:
    """A scale bar in the lower left of a panel drawn in pixels of ``um_per_px`` (squidpy's own scale bar)."""
    if not um_per_px:
        return
    from matplotlib_scalebar.scalebar import ScaleBar

    x0, x1 = ax.get_xlim()
    ax.add_artist(ScaleBar(um_per_px, "um", **scalebar_kwargs(abs(x1 - x0) * um_per_px)))


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

    view = AnnData(obs=values.loc[get_table(data, table_key).obs_names[mask]].copy())
    layout = with_legacy_layout(data, view, mask, image_key=image_key, max_px=max_px, table_key=table_key)
    if layout.library_id is not None:
        kw = {"library_id": [layout.library_id], "img_res_key": "hires", "shape": layout.shape}
        box = crop_box(view, layout.library_id)
        kw["crop_coord"] = [box]
        if scalebar:
            width_um = (box[2] - box[0]) * layout.um_per_px
            kw |= {
                "scalebar_dx": [layout.um_per_px],
                "scalebar_units": ["um"],
                "scalebar_kwargs": scalebar_kwargs(width_um),
            }
    else:
        kw = {"shape": None, "img": False}
    cols = list(values.columns)
    if ax is None:
        n = len(cols)
        nc = min(ncols, n)
        nr = int(np.ceil(n / nc))
        if figsize is None:  # panels as tall as the region's image is, plus room for a title
            aspect = 0.85
            if layout.library_id is not None:  # the spots' extent, as squidpy crops to it
                xy = np.asarray(view.obsm["spatial"])
                extent = np.ptp(xy, axis=0) + 1.0
                aspect = float(np.clip(extent[1] / extent[0], 0.3, 2.0))
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
