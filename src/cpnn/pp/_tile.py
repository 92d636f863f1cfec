"""cp.pp.tile: a grid of tissue tiles over whole images, as square shapes with a tiles table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import ndimage, sparse
from tqdm.auto import tqdm

from .._core import SPATIAL, TILES, is_spatialdata
from .._errors import CpnnError
from .._settings import settings
from ..data._content import sample_image
from ..data._patches import to_rgb_float
from ..data._regions import _affine, _scale, image_levels, image_um_per_px

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

#: The tissue mask is computed where a tile spans about this many pixels (never at full resolution).
_MASK_PX_PER_TILE = 8


def _block_means(arr: Any, f: int, scale: float | None = None) -> np.ndarray:
    """RGB means in [0, 1] over ``f`` x ``f`` pixel blocks of a (c, h, w) image, read ~1024 px at a time.

    Each read is a small window of the (lazy) array, so memory stays bounded by the window, not by
    the image; the remainder beyond a multiple of ``f`` is dropped.
    """
    data = arr.data if hasattr(arr, "data") else arr
    _, h, w = (int(n) for n in data.shape)
    hh, ww = h // f, w // f
    out = np.empty((3, hh, ww), np.float32)
    step = max(1, 1024 // f) * f
    for y in range(0, hh * f, step):
        for x in range(0, ww * f, step):
            block = data[:, y : min(y + step, hh * f), x : min(x + step, ww * f)]
            block = to_rgb_float(np.asarray(block.compute() if hasattr(block, "compute") else block), scale)
            _, bh, bw = block.shape
            out[:, y // f : (y + bh) // f, x // f : (x + bw) // f] = block.reshape(3, bh // f, f, bw // f, f).mean(
                (2, 4)
            )
    return out


def lowres_rgb(element: Any, tile_px: float, *, image_key: str = "image") -> tuple[np.ndarray, float]:
    """The image downsampled so that a ``tile_px`` (full-resolution pixels) tile spans about 8 pixels.

    Starts from the coarsest pyramid level that is fine enough and averages pixel blocks one
    window at a time, so the full-resolution array is never held in memory. Returns RGB floats in
    [0, 1] (h, w, 3) and the downsampling factor relative to full resolution.
    """
    levels = image_levels(element)
    full_w = int(levels[0].shape[-1])
    chosen, factor = levels[0], 1.0
    for arr in levels:  # finest -> coarsest: keep the coarsest with at least 4 px per tile
        f = full_w / int(arr.shape[-1])
        if tile_px / f >= 4:
            chosen, factor = arr, f
    data = chosen.data if hasattr(chosen, "data") else chosen
    h, w = int(data.shape[-2]), int(data.shape[-1])
    grid = np.stack(np.meshgrid(np.linspace(0, w - 1, 4), np.linspace(0, h - 1, 4)), -1).reshape(-1, 2)
    sample = sample_image(data, grid, image_key)  # the stored intensity range, from a few windows
    if sample.rescaled:
        logg.warning(sample.rescaled)
    extra = max(1, int(tile_px / factor // _MASK_PX_PER_TILE))
    return np.moveaxis(_block_means(chosen, extra, sample.scale), 0, -1), factor * extra


#: Saturation below which a pixel is never tissue, whatever Otsu's threshold: glass, scanner noise
#: and grey margins lie below ~0.02, the palest stained tissue above ~0.08.
MIN_TISSUE_SATURATION = 0.05


def tissue_mask(rgb: np.ndarray, *, px_per_tile: float = _MASK_PX_PER_TILE) -> np.ndarray:
    """Tissue pixels of an H&E thumbnail: Otsu threshold on the (median-filtered) saturation.

    Stained tissue is saturated; glass, background and grey scanner margins are not. On a grey
    (single-channel) slide, darkness (1 - brightness) stands in for saturation. The
    threshold is never below :data:`MIN_TISSUE_SATURATION`, so that blank glass with noise, whose
    saturation Otsu would still split in two, has no tissue. Near-black
    pixels (pen marks, scanner borders) are excluded. Pale tissue inside the section (stroma, fat)
    is kept by a closing over half a tile and hole filling; specks under two tiles are dropped.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, remove_small_objects

    hi, lo = rgb.max(-1), rgb.min(-1)
    if float(np.percentile(hi - lo, 99)) < 0.02:  # a grey slide: tissue is what is darker than the glass
        sat = ndimage.median_filter(1.0 - hi, size=3)
    else:
        sat = ndimage.median_filter((hi - lo) / np.maximum(hi, 1e-6), size=3)
    if float(sat.max() - sat.min()) < 1e-3:  # a uniform image: no tissue to separate
        return np.zeros(sat.shape, bool)
    mask = (sat > max(float(threshold_otsu(sat)), MIN_TISSUE_SATURATION)) & (hi > 0.1)
    radius = max(1, round(px_per_tile / 2))
    mask = ndimage.binary_closing(np.pad(mask, radius), structure=disk(radius))[radius:-radius, radius:-radius]
    mask = ndimage.binary_fill_holes(mask)
    return remove_small_objects(mask, max_size=int(2 * px_per_tile**2))


def _sharpest_per_space(sdata: Any) -> list[str]:
    """Image keys, keeping per set of coordinate systems only the image with the most pixels per unit."""
    from spatialdata.transformations import get_transformation

    best: dict[frozenset, tuple[float, str]] = {}
    for key, element in sdata.images.items():
        spaces = get_transformation(element, get_all=True)
        group = frozenset(spaces)
        scale = _scale(_affine(element, next(iter(spaces))))  # coordinate units per pixel
        if group not in best or scale < best[group][0]:
            best[group] = (scale, key)
    return [key for _, key in best.values()]


def _grid(mask: np.ndarray, full_shape: tuple[int, int], tile_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and tissue fractions of the full-resolution tile grid, measured on the mask."""
    h0, w0 = full_shape
    ny, nx = int(h0 // tile_px), int(w0 // tile_px)
    if ny == 0 or nx == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    sy, sx = mask.shape[0] / h0, mask.shape[1] / w0
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    integral[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)

    def edges(n: int, s: float, size: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.round(np.arange(n) * tile_px * s).astype(int), 0, size - 1)
        b = np.clip(np.round(np.arange(1, n + 1) * tile_px * s).astype(int), a + 1, size)
        return a, b

    y0, y1 = edges(ny, sy, mask.shape[0])
    x0, x1 = edges(nx, sx, mask.shape[1])
    Y0, X0 = np.meshgrid(y0, x0, indexing="ij")
    Y1, X1 = np.meshgrid(y1, x1, indexing="ij")
    area = (Y1 - Y0) * (X1 - X0)
    inside = integral[Y1, X1] - integral[Y0, X1] - integral[Y1, X0] + integral[Y0, X0]
    rows, cols = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    return rows.ravel(), cols.ravel(), (inside / area).ravel()


def tile(
    sdata: SpatialData,
    *,
    image_key: str | Sequence[str] | None = None,
    tile_size_um: float = 112.0,
    min_tissue: float = 0.5,
    mpp: float | None = None,
    key_added: str = TILES,
) -> None:
    """Cut the tissue of whole images into a grid of square tiles.

    Tissue is found on a downsampled copy of the image (a pyramid level, further averaged chunk by
    chunk, so that a tile spans about 8 pixels): Otsu's threshold on the saturation, which
    separates stained tissue from glass. Tiles with at least ``min_tissue`` tissue are kept. The
    full-resolution image is never loaded, so images larger than memory can be tiled.

    Parameters
    ----------
    sdata
        SpatialData with the H&E image(s).
    image_key
        Image(s) to tile. Default: every image, keeping only the sharpest when several cover the
        same coordinate systems (e.g. Visium's hires and lowres).
    tile_size_um
        Side of a tile in micrometres (the patch size the encoder sees; 112 as for spots).
    min_tissue
        Minimum tissue fraction of a kept tile, in [0, 1].
    mpp
        Micrometres per full-resolution pixel. Default: derived from a table whose spots share the
        image's coordinate system (HER2ST, Visium); pass it for a bare whole-slide image.
    key_added
        Key of the tiles table; each image's tiles are the shapes element ``f"{key_added}_{image}"``.

    Returns
    -------
    ``None``. Adds ``sdata.shapes[f"{key_added}_{image}"]`` (squares in the image's pixels, with
    its transformations) and ``sdata.tables[key_added]``: one row per tile, no genes,
    ``obs`` columns ``region``, ``tile_id``, ``image``, ``row``, ``col``, ``tissue_fraction``,
    ``obsm["spatial"]`` (tile centres in image pixels) and ``uns["cpnn_spatial"]`` (scale and
    tile size), so that :func:`cpnn.pp.embed`, :func:`cpnn.tl.predict` and :func:`cpnn.pl.proportions`
    accept ``table_key=key_added``.
    """
    import shapely
    from geopandas import GeoDataFrame
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation

    if not is_spatialdata(sdata):
        raise CpnnError(f"sdata must be a SpatialData with images; got {type(sdata).__name__}.")
    if not len(sdata.images):
        raise CpnnError("sdata has no image to tile; add the H&E image first.")
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise CpnnError(f"min_tissue={min_tissue} must lie in [0, 1].")
    if tile_size_um <= 0:
        raise CpnnError(f"tile_size_um={tile_size_um} must be positive.")
    if mpp is not None and not mpp > 0:
        raise CpnnError(f"mpp={mpp} must be positive (micrometres per pixel).")
    if key_added in sdata.tables and SPATIAL not in sdata.tables[key_added].uns:
        raise CpnnError(f"key_added={key_added!r} is an existing table that is not a cpnn tiles table; choose another.")
    if image_key is None:
        keys = _sharpest_per_space(sdata)
    else:
        keys = [image_key] if isinstance(image_key, str) else list(image_key)
        unknown = [k for k in keys if k not in sdata.images]
        if unknown:
            raise CpnnError(f"image_key: {unknown} not among the images {list(sdata.images)}.")
    start = logg.info(f"tiling {len(keys)} image(s) into {tile_size_um:g} um tiles")
    tables, shapes, um_per_px = [], {}, {}
    for key in tqdm(keys, desc="tiling", disable=not settings.progress_bar or len(keys) < 2):
        element = sdata.images[key]
        um = float(mpp) if mpp is not None else image_um_per_px(sdata, key)
        if um is None:
            raise CpnnError(
                f"The physical scale of image {key!r} is unknown (no spot table shares its coordinate system); "
                "pass mpp=<micrometres per full-resolution pixel>, e.g. mpp=0.5 for a 20x scan."
            )
        tile_px = tile_size_um / um
        levels = image_levels(element)
        h0, w0 = int(levels[0].shape[-2]), int(levels[0].shape[-1])
        if tile_px < 2 or tile_px > min(h0, w0):
            raise CpnnError(
                f"tile_size_um={tile_size_um} is {tile_px:.1f} px of image {key!r} ({h0} x {w0} px); "
                "choose a tile of at least 2 pixels that fits in the image."
            )
        rgb, factor = lowres_rgb(element, tile_px, image_key=key)
        rows, cols, frac = _grid(tissue_mask(rgb, px_per_tile=tile_px / factor), (h0, w0), tile_px)
        keep = frac >= min_tissue if min_tissue > 0 else np.ones(len(frac), bool)
        if not keep.any():
            logg.warning(f"no tissue tile found in image {key!r}; lower min_tissue= or check the image")
            continue
        rows, cols, frac = rows[keep], cols[keep], frac[keep]
        x0, y0 = cols * tile_px, rows * tile_px
        region = f"{key_added}_{key}"
        ids = np.arange(len(rows))
        geo = GeoDataFrame(geometry=shapely.box(x0, y0, x0 + tile_px, y0 + tile_px), index=ids)
        shapes[region] = ShapesModel.parse(geo, transformations=dict(get_transformation(element, get_all=True)))
        um_per_px[region] = um
        obs = pd.DataFrame(
            {
                "region": region,
                "tile_id": ids,
                "image": key,
                "row": rows,
                "col": cols,
                "tissue_fraction": frac.astype(np.float32),
            },
            index=[f"{key}_{r}_{c}" for r, c in zip(rows, cols, strict=True)],
        )
        a = AnnData(sparse.csr_matrix((len(obs), 0), dtype=np.float32), obs=obs)
        a.obsm["spatial"] = np.c_[x0 + tile_px / 2, y0 + tile_px / 2]
        tables.append(a)
    if not tables:
        raise CpnnError("No tissue tile found in any image; lower min_tissue= or check the images and mpp=.")
    table = ad.concat(tables) if len(tables) > 1 else tables[0]
    for col in ("region", "image"):
        table.obs[col] = pd.Categorical(table.obs[col], categories=list(dict.fromkeys(table.obs[col])))
    table.uns[SPATIAL] = {
        "um_per_px": um_per_px,
        "spot_diameter_um": float(tile_size_um),
        "tile_size_um": float(tile_size_um),
        "min_tissue": float(min_tissue),
    }
    table = TableModel.parse(table, region=list(shapes), region_key="region", instance_key="tile_id")
    for old in [k for k in sdata.shapes if k.startswith(f"{key_added}_") and k not in shapes]:
        if key_added in sdata.tables and old in sdata.tables[key_added].obs["region"].astype(str).unique():
            del sdata.shapes[old]  # tiles of an earlier call with the same key_added
    for region, geo in shapes.items():
        sdata.shapes[region] = geo
    sdata.tables[key_added] = table
    logg.info(
        f"    {table.n_obs} tiles over {len(shapes)} image(s)",
        time=start,
        deep=f"added\n    {list(shapes)} (sdata.shapes)\n    {key_added!r} (sdata.tables)",
    )
