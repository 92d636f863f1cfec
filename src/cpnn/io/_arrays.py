"""cp.io.from_arrays: any spatial transcriptomics with its own H&E, from an image, spot pixels and counts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from numpy.typing import ArrayLike
from scipy import sparse

from .._core import SPATIAL, counts_dtype
from .._core._images import ATTRS_KEY, image_levels
from .._errors import CpnnError
from ._wsi import is_wsi_path, read_wsi

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData
    from xarray import DataArray, DataTree


@dataclass
class Sample:
    """One sample's parts: an image element, its spots in image pixels, counts and scale."""

    name: str
    image: Any  # a SpatialData image element (DataArray or multiscale DataTree)
    coords_px: np.ndarray  # spots x 2, (x, y) in level-0 pixels
    counts: AnnData
    um_per_px: float
    spot_diameter_um: float
    uns: dict = field(default_factory=dict)


def _image_element(image: Any, name: str, mpp: float | None) -> tuple[Any, float | None]:
    """A SpatialData image element from an array, an image file or a slide file; and the file's pixel size."""
    from spatialdata.models import Image2DModel

    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.exists():
            raise CpnnError(f"image={str(image)!r} does not exist; pass an image array or the path of the H&E file.")
        if is_wsi_path(path):
            sdata = read_wsi(path, mpp=mpp, image_key=name)
            return sdata.images[name], sdata.attrs[ATTRS_KEY]["um_per_px"][name]
        from skimage.io import imread

        image = imread(path)
    if hasattr(image, "dims") or hasattr(image, "children"):  # already an image element
        return image, None
    arr = image
    if getattr(arr, "ndim", 0) == 2:
        arr = arr[None]
    elif getattr(arr, "ndim", 0) == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
        arr = arr.transpose(2, 0, 1)  # (y, x, c) as most readers return it
    if getattr(arr, "ndim", 0) != 3 or arr.shape[0] not in (1, 3, 4):
        raise CpnnError(f"image must be (y, x, 3), (3, y, x) or (y, x); got shape {getattr(image, 'shape', None)}.")
    chunks = (arr.shape[0], 1024, 1024)
    scale_factors = []
    side = min(arr.shape[1:])
    while side // 2 ** (len(scale_factors) + 1) >= 512:
        scale_factors.append(2)
    return (
        Image2DModel.parse(arr, dims=("c", "y", "x"), scale_factors=scale_factors or None, chunks=chunks),
        None,
    )


def _check_coords(coords: Any, n: int, shape: tuple[int, int], name: str) -> np.ndarray:
    xy = np.asarray(coords, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise CpnnError(f"coords_px must be (n_spots, 2) pixel positions (x, y); got shape {xy.shape}.")
    if len(xy) != n:
        raise CpnnError(f"coords_px has {len(xy)} rows but counts has {n} spots; pass one (x, y) per spot, in order.")
    if not np.isfinite(xy).all():
        raise CpnnError(f"coords_px holds {int((~np.isfinite(xy)).any(1).sum())} spots with NaN or infinite positions.")
    h, w = shape

    def inside(p: np.ndarray) -> np.ndarray:
        return (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)

    ok = inside(xy)
    if not ok.all():
        hint = ""
        if inside(xy[:, ::-1]).all():
            hint = " Swapped, every spot falls inside: pass (x, y) = (column, row), not (row, column)."
        raise CpnnError(
            f"Sample {name!r}: {int((~ok).sum())} of {len(xy)} spots lie outside the image ({w} x {h} px).{hint} "
            "coords_px must be level-0 pixels of this image."
        )
    return xy


def sample_parts(
    image: Any,
    coords_px: Any,
    counts: AnnData,
    *,
    name: str,
    spot_diameter_um: float | None,
    mpp: float | None,
    spot_diameter_px: float | None = None,
    uns: dict | None = None,
) -> Sample:
    """Check and assemble one sample (see :func:`from_arrays`)."""
    if not isinstance(counts, AnnData):
        raise CpnnError(f"counts must be an AnnData (spots x genes, raw counts); got {type(counts).__name__}.")
    if counts.n_obs == 0 or counts.n_vars == 0:
        raise CpnnError(f"counts of sample {name!r} is empty ({counts.n_obs} spots x {counts.n_vars} genes).")
    for arg, v in (("mpp", mpp), ("spot_diameter_um", spot_diameter_um), ("spot_diameter_px", spot_diameter_px)):
        if v is not None and not (np.isfinite(v) and v > 0):
            raise CpnnError(f"{arg}={v} must be a positive number.")
    element, file_mpp = _image_element(image, f"{name}_image", mpp)
    um = mpp if mpp is not None else file_mpp
    if um is None and spot_diameter_um is not None and spot_diameter_px is not None:
        um = spot_diameter_um / spot_diameter_px
    if um is None:
        raise CpnnError(
            f"The pixel size of sample {name!r} is unknown: pass mpp=<micrometres per pixel>, or "
            "spot_diameter_um= together with spot_diameter_px=."
        )
    if spot_diameter_um is None:
        if spot_diameter_px is None:
            raise CpnnError(
                f"The spot size of sample {name!r} is unknown: pass spot_diameter_um= (55 for Visium, 100 for legacy ST)."
            )
        spot_diameter_um = spot_diameter_px * um
    level0 = image_levels(element)[0]
    xy = _check_coords(coords_px, counts.n_obs, (int(level0.shape[-2]), int(level0.shape[-1])), name)
    return Sample(name, element, xy, counts, float(um), float(spot_diameter_um), dict(uns or {}))


def build_sdata(samples: list[Sample], *, table_key: str = "table") -> Any:
    """One SpatialData from samples: per sample an image, circles and coordinate system; one table."""
    import anndata as ad
    import spatialdata as sd
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, set_transformation

    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        raise CpnnError(f"Sample names must be unique, got {names}.")
    images, shapes, tables, scale = {}, {}, [], {}
    for s in samples:
        region = f"{s.name}_spots"
        element = s.image
        set_transformation(element, {s.name: Identity()}, set_all=True)
        images[f"{s.name}_image"] = element
        radius = s.spot_diameter_um / s.um_per_px / 2.0
        shapes[region] = ShapesModel.parse(
            s.coords_px,
            geometry=0,
            radius=np.full(len(s.coords_px), radius),
            index=np.arange(len(s.coords_px)),
            transformations={s.name: Identity()},
        )
        scale[region] = s.um_per_px
        a = s.counts.copy()  # never the user's object
        if not sparse.issparse(a.X):  # float32 unless a count is beyond its exact whole numbers (2**24)
            a.X = sparse.csr_matrix(np.asarray(a.X, dtype=counts_dtype(a.X)))
        a.obs = a.obs.copy()
        a.obs["sample"] = s.name
        a.obs["region"] = region
        a.obs["spot_id"] = np.arange(a.n_obs)
        a.obs_names = [f"{s.name}_{o}" for o in a.obs_names] if len(samples) > 1 else list(a.obs_names)
        a.obsm["spatial"] = s.coords_px
        a.uns = {}
        tables.append(a)
    table = ad.concat(tables, join="inner", merge="same") if len(tables) > 1 else tables[0]
    if table.n_vars == 0:
        raise CpnnError(f"The samples {names} share no gene; give their counts common var_names.")
    if not table.obs_names.is_unique:
        raise CpnnError(
            "Spot names (counts.obs_names) must be unique within a sample; call counts.obs_names_make_unique()."
        )
    for col in ("sample", "region"):
        table.obs[col] = pd.Categorical(
            table.obs[col].astype(str), categories=names if col == "sample" else list(shapes)
        )
    diameters = {s.spot_diameter_um for s in samples}
    table.uns[SPATIAL] = {"um_per_px": scale}
    if len(diameters) == 1:
        table.uns[SPATIAL]["spot_diameter_um"] = diameters.pop()
    meta = {s.name: s.uns for s in samples if s.uns}
    if meta:
        table.uns["samples"] = meta
    table = TableModel.parse(table, region=list(shapes), region_key="region", instance_key="spot_id")
    sdata = sd.SpatialData(images=images, shapes=shapes, tables={table_key: table})
    sdata.attrs[ATTRS_KEY] = {"um_per_px": {f"{s.name}_image": s.um_per_px for s in samples}}
    return sdata


def from_arrays(
    image: ArrayLike | str | os.PathLike | DataArray | DataTree,
    coords_px: ArrayLike | None,
    counts: AnnData,
    *,
    spot_diameter_um: float | None = None,
    mpp: float | None = None,
    spot_diameter_px: float | None = None,
    sample: str = "sample",
) -> SpatialData:
    """Build a SpatialData cpnn can read from an H&E image, spot positions in its pixels and counts.

    For any spatial transcriptomics with its own H&E (legacy ST, Slide-seq with images, in-house
    arrays): the image becomes an image element (multiscale; a slide file is read lazily), the spots
    circles of the given diameter, and the counts a table annotating them with ``region`` /
    ``spot_id`` keys, all in the coordinate system ``sample``.

    Parameters
    ----------
    image
        The H&E image: an array (y, x, 3) or (3, y, x) (numpy or dask), the path of an image file
        (``.png``, ``.jpg``, ...), the path of a whole-slide file (``.svs``, pyramidal ``.tif``, ...,
        read with :func:`read_wsi`), or a SpatialData image element.
    coords_px
        Spot centres as (n_spots, 2) level-0 pixel positions (x = column, y = row), in the order of
        ``counts``; default ``counts.obsm["spatial"]``.
    counts
        Raw counts, spots x genes (copied, never changed).
    spot_diameter_um
        Spot diameter in micrometres (55 for Visium, 100 for legacy ST).
    mpp
        Micrometres per image pixel. Default: the slide file's own, or ``spot_diameter_um /
        spot_diameter_px``.
    spot_diameter_px
        Spot diameter in image pixels, when the pixel size is not known otherwise.
    sample
        Name of the sample: its coordinate system, image ``f"{sample}_image"`` and spots
        ``f"{sample}_spots"``.

    Returns
    -------
    A :class:`spatialdata.SpatialData` with the image, the spots and the table ``"table"``
    (``obs["sample"]``, ``obsm["spatial"]``, ``uns["cpnn_spatial"]`` with the scale), ready for
    :func:`cpnn.pp.embed`, :func:`cpnn.tl.fit` and :func:`cpnn.tl.predict`.
    """
    if coords_px is None:
        if not isinstance(counts, AnnData) or "spatial" not in counts.obsm:
            raise CpnnError("coords_px is None and counts has no obsm['spatial']; pass the spot pixel positions.")
        coords_px = counts.obsm["spatial"]
    if not isinstance(sample, str) or not sample:
        raise CpnnError(f"sample must be a non-empty name, got {sample!r}.")
    parts = sample_parts(
        image, coords_px, counts, name=sample, spot_diameter_um=spot_diameter_um, mpp=mpp,
        spot_diameter_px=spot_diameter_px,
    )  # fmt: skip
    return build_sdata([parts])
