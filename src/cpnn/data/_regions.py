"""Where each annotated region's spots lie on which image, in image pixels and micrometres."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from anndata import AnnData

from .._core import SPATIAL, bin_size_um
from .._core._images import ATTRS_KEY, image_levels
from .._errors import CpnnError
from ._content import ImageSample, sample_image


@dataclass
class RegionImage:
    """The image chosen for one region, and the region's spots in that image's pixels."""

    region: str
    image_key: str
    array: Any  # dask or numpy array, (c, y, x), full resolution
    centers_px: np.ndarray  # spots x 2, (x, y) in image pixels
    obs_index: np.ndarray  # positions of the spots in the table
    um_per_px: float
    spot_diameter_px: float | None = None  # median spot diameter in image pixels, when known
    scale: float = 255.0  # divisor mapping stored values to [0, 1]
    fingerprint: str = ""  # image content, spot geometry and scale: what embeddings of this region depend on


def _affine(element: Any, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def _scale(affine: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(affine[:2, :2]))))


def table_regions(adata: AnnData) -> tuple[list[str], str, str]:
    """Regions annotated by the table, and its region and instance keys."""
    attrs = adata.uns.get("spatialdata_attrs")
    if not isinstance(attrs, dict) or "region_key" not in attrs:
        raise CpnnError(
            "The table is not annotating any SpatialData element (no uns['spatialdata_attrs']); "
            "build it with spatialdata.models.TableModel.parse(..., region=..., region_key=..., instance_key=...)."
        )
    region = attrs["region"]
    regions = [region] if isinstance(region, str) else list(region)
    return regions, attrs["region_key"], attrs["instance_key"]


#: Spot diameters of the platforms cpnn recognises, in micrometres.
VISIUM_SPOT_DIAMETER_UM = 55.0


def known_spot_diameter_um(sdata: Any, adata: AnnData) -> float | None:
    """The spot diameter implied by the data's provenance, else ``None``.

    55 um for 10x Visium read by spatialdata-io or scanpy: the reader tag, Space Ranger's scale
    factors or version in ``uns["spatial"]``, or its ``in_tissue``/``array_row``/``array_col`` columns.
    """
    attrs = getattr(sdata, "attrs", None) or {}
    if attrs.get("spatialdata_io_reader") == "visium":
        return VISIUM_SPOT_DIAMETER_UM
    spatial = adata.uns.get("spatial")
    if isinstance(spatial, dict):
        for lib in spatial.values():
            if not isinstance(lib, dict):
                continue
            version = str(lib.get("metadata", {}).get("software_version", ""))
            if "spot_diameter_fullres" in lib.get("scalefactors", {}) or version.startswith("spaceranger"):
                return VISIUM_SPOT_DIAMETER_UM
    # Space Ranger's tissue_positions columns survive concatenation, when the tags above do not
    if {"in_tissue", "array_row", "array_col"} <= set(adata.obs.columns):
        return VISIUM_SPOT_DIAMETER_UM
    return None


def spot_units(shapes: Any) -> float | None:
    """A spot's size in its shapes' units: the diameter of circles, the side of square bins, else ``None``."""
    if "radius" in shapes:
        return 2.0 * float(np.median(shapes["radius"]))
    return square_side(shapes)


def _um_per_unit(adata: AnnData, region: str, units: float | None, spot_diameter_um: float | None) -> float:
    """Micrometres per shape unit of ``region``, whose spots measure ``units`` (:func:`spot_units`)."""
    spatial = adata.uns.get(SPATIAL, {})
    per_region = spatial.get("um_per_px", {}) if isinstance(spatial, dict) else {}
    if region in per_region:
        return float(per_region[region])
    diameter = spot_diameter_um or (spatial.get("spot_diameter_um") if isinstance(spatial, dict) else None)
    if diameter is None:
        raise CpnnError(
            f"Cannot tell the physical scale of region {region!r}: pass spot_diameter_um= (55 for Visium, "
            "100 for legacy ST) or set table.uns['cpnn_spatial']['um_per_px'][region]."
        )
    if units is None:
        raise CpnnError(
            f"Region {region!r} has neither circles (a 'radius' column) nor square bins, so its scale "
            "cannot be derived; pass mpp=."
        )
    return float(diameter) / units


def square_side(shapes: Any) -> float | None:
    """The median side of square (polygon) shapes in their own units, ``None`` for other geometries."""
    geom = shapes.geometry
    if len(geom) == 0 or not (geom.geom_type == "Polygon").all():
        return None
    sample = geom.iloc[: min(len(geom), 2000)]
    area = sample.area.to_numpy()
    bounds = sample.bounds.to_numpy()
    w, h = bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]
    # a square (axis-aligned or rotated) has area side^2 and a bounding box no larger than side * sqrt 2
    if not np.allclose(area, np.sqrt(area) ** 2) or (np.maximum(w, h) > 1.5 * np.sqrt(area) + 1e-9).any():
        return None
    return float(np.median(np.sqrt(area)))


def _check_regions(adata: AnnData, obs_mask: np.ndarray, regions: list[str], region_key: str) -> None:
    """Every selected spot must belong to a region the table annotates (else it would have no image)."""
    values = adata.obs[region_key]
    missing = values.isna().to_numpy() & obs_mask
    if missing.any():
        raise CpnnError(
            f"{int(missing.sum())} selected spots have no region (obs[{region_key!r}] is missing); "
            "fill the column or deselect them."
        )
    outside = sorted(set(values.astype(str).to_numpy()[obs_mask]) - set(regions))
    if outside:
        raise CpnnError(
            f"Spots of region(s) {outside[:5]} are selected, but the table's spatialdata_attrs['region'] lists only "
            f"{regions[:5]}; so they have no shapes or image. Add the region to the table's annotation "
            "(spatialdata.models.TableModel.parse(..., region=[...])) or deselect those spots."
        )


def check_one_bin_size(shapes: Any, ids: Any, where: str, *, what: str) -> None:
    """Refuse a region of square bins that mixes several bin sizes (circles and other shapes pass)."""
    if "radius" in shapes or square_side(shapes) is None:
        return
    sides = np.sqrt(shapes.loc[ids].geometry.area.to_numpy())
    if len(sides) and sides.max() > 1.01 * sides.min():
        sizes = sorted({float(f"{v:.3g}") for v in sides})
        raise CpnnError(
            f"{where} mixes square bins of {len(sizes)} sizes ({sizes[:5]} in its "
            f"units): {what} one bin size per table. Give each bin size its own table (as spatialdata-io's visium_hd "
            "reader does: square_002um, square_008um, ...)."
        )


def _check_radius(shapes: Any, region: str) -> None:
    if "radius" not in shapes:
        return
    radius = np.asarray(shapes["radius"], dtype=float)
    bad = ~(np.isfinite(radius) & (radius > 0))
    if bad.any():
        raise CpnnError(
            f"Region {region!r} has {int(bad.sum())} spots whose radius is zero, negative or NaN; "
            "fix the shapes' 'radius' column (spots must have a positive size)."
        )


def _fingerprint(key: str, arr: Any, sample: ImageSample, shapes: Any, um_per_px: float, a_shape, a_img) -> str:
    """Digest of what embeddings of a region depend on: the image's content and the spots' geometry and scale."""
    h = hashlib.sha256(f"{key}|{sample.digest}|{sample.scale}|{um_per_px:.12g}".encode())
    h.update(np.ascontiguousarray(a_shape, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(a_img, dtype=np.float64).tobytes())
    cent = shapes.geometry.centroid
    h.update(np.ascontiguousarray(np.c_[cent.x.to_numpy(), cent.y.to_numpy()], dtype=np.float64).tobytes())
    if "radius" in shapes:
        h.update(np.ascontiguousarray(shapes["radius"].to_numpy(), dtype=np.float64).tobytes())
    return h.hexdigest()


def region_images(
    sdata: Any,
    adata: AnnData,
    obs_mask: np.ndarray,
    *,
    image_key: str | None = None,
    spot_diameter_um: float | None = None,
    mpp: float | None = None,
) -> list[RegionImage]:
    """Find, for every region with selected spots, the sharpest usable image covering them.

    Images are matched to a region through a shared coordinate system (never by name). Among
    candidates that cover all spot centres the one with the most pixels per micrometre wins,
    unless a sample of its pixels under the spots shows it is blank, constant, or far too dark or
    bright: then the next one is taken, with a warning (a forced ``image_key`` is refused instead).
    Spot centres are mapped into that image's pixels with the SpatialData transformations.

    Parameters
    ----------
    sdata
        The SpatialData.
    adata
        Its table annotating the regions.
    obs_mask
        Spots to locate.
    image_key
        Force this image element for every region.
    spot_diameter_um
        Spot diameter, used to derive the scale when the table does not record it.
    mpp
        Micrometres per unit of the spots' coordinates; overrides everything else.
    """
    from spatialdata.transformations import get_transformation

    regions, region_key, instance_key = table_regions(adata)
    _check_regions(adata, obs_mask, regions, region_key)
    if image_key is not None and image_key not in sdata.images:
        raise CpnnError(f"image_key={image_key!r} is not an image of the SpatialData; images are {list(sdata.images)}.")
    out: list[RegionImage] = []
    obs_region = adata.obs[region_key].astype(str).to_numpy()
    for region in regions:
        idx = np.flatnonzero(obs_mask & (obs_region == region))
        if len(idx) == 0:
            continue
        if region not in sdata.shapes:
            raise CpnnError(f"Region {region!r} of the table is not a shapes element of the SpatialData.")
        shapes = sdata.shapes[region]
        _check_radius(shapes, region)
        ids = adata.obs[instance_key].to_numpy()[idx]
        try:
            geom = shapes.loc[ids].geometry
        except KeyError as e:
            raise CpnnError(
                f"Some {instance_key!r} values of region {region!r} are not in its shapes index: {e}"
            ) from e
        check_one_bin_size(shapes, ids, f"Region {region!r}", what="patches are read at")
        xy = np.c_[geom.centroid.x.to_numpy(), geom.centroid.y.to_numpy()]
        every = shapes.geometry.centroid
        xy_all = np.c_[every.x.to_numpy(), every.y.to_numpy()]
        diameter = (
            spot_diameter_um
            if spot_diameter_um is not None
            else table_spot_diameter_um(adata) or bin_size_um(region) or known_spot_diameter_um(sdata, adata)
        )
        units = spot_units(shapes)
        um_unit = float(mpp) if mpp is not None else _um_per_unit(adata, region, units, diameter)
        shape_cs = list(get_transformation(shapes, get_all=True))
        candidates, partial = [], []
        for key in [image_key] if image_key is not None else list(sdata.images):
            img = sdata.images[key]
            common = [cs for cs in get_transformation(img, get_all=True) if cs in shape_cs]
            if not common:
                continue
            cs = common[0]
            a_shape, a_img = _affine(shapes, cs), _affine(img, cs)
            to_px = np.linalg.inv(a_img) @ a_shape
            pts = (to_px @ np.c_[xy, np.ones(len(xy))].T).T[:, :2]
            arr = image_levels(img)[0]
            h, w = arr.shape[-2], arr.shape[-1]
            inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
            if not inside.all():
                if inside.any():  # the image covers the region but for some spots: name them
                    partial.append((key, w, h, adata.obs_names[idx[~inside]]))
                continue
            um_px = um_unit * _scale(a_img) / _scale(a_shape)
            if units is not None:  # circle diameter or bin side: shape units -> coordinate system -> image pixels
                spot_px = units * _scale(a_shape) / _scale(a_img)
            else:
                spot_px = float(diameter) / um_px if diameter else None
            data = arr.data if hasattr(arr, "data") else arr
            all_px = (to_px @ np.c_[xy_all, np.ones(len(xy_all))].T).T[:, :2]
            candidates.append((um_px, key, data, pts, spot_px, all_px, a_shape, a_img))
        if not candidates and partial:
            key, w, h, names = partial[0]
            raise CpnnError(
                f"Region {region!r}: {len(names)} of {len(idx)} selected spots lie outside image {key!r} "
                f"({w} x {h} px), e.g. {list(names[:5])}. Deselect them (regions=/spots= as a mask), or check "
                "the image's and the shapes' transformations."
            )
        if not candidates:
            raise CpnnError(
                f"Region {region!r} has no image: no image element shares a coordinate system with it and "
                f"covers its spots (images: {list(sdata.images)}). Add the H&E image, or deselect the region."
            )
        out.append(_choose(region, idx, shapes, sorted(candidates, key=lambda c: c[0]), forced=image_key is not None))
    return out


def _choose(region: str, idx: np.ndarray, shapes: Any, candidates: list, *, forced: bool) -> RegionImage:
    """The sharpest candidate whose pixels under the spots are usable; warn for each one passed over."""
    from scanpy import logging as logg

    problems = []
    for um_px, key, data, pts, spot_px, all_px, a_shape, a_img in candidates:
        inside = all_px[
            (all_px[:, 0] >= 0)
            & (all_px[:, 0] < data.shape[-1])
            & (all_px[:, 1] >= 0)
            & (all_px[:, 1] < data.shape[-2])
        ]
        sample = sample_image(data, inside if len(inside) else pts, key)
        problem = sample.problem()
        if problem:
            problems.append(f"{key!r}: {problem}")
            continue
        if sample.rescaled:
            logg.warning(sample.rescaled)
        if problems:
            logg.warning(f"region {region!r}: passed over image(s) {'; '.join(problems)}; using {key!r}")
        fp = _fingerprint(key, data, sample, shapes, um_px, a_shape, a_img)
        return RegionImage(region, key, data, pts, idx, um_px, spot_px, sample.scale, fp)
    fix = "pass another image_key=" if forced else "add a usable H&E image (or pass image_key=)"
    raise CpnnError(f"Region {region!r} has no usable image: {'; '.join(problems)}. Check the image, or {fix}.")


def image_mpp(sdata: Any, image_key: str) -> float | None:
    """Micrometres per level-0 pixel recorded in ``sdata.attrs["cpnn"]["um_per_px"]`` (by :func:`cpnn.io.read_wsi`)."""
    attrs = getattr(sdata, "attrs", None) or {}
    entry = attrs.get(ATTRS_KEY, {}) if isinstance(attrs, dict) else {}
    value = entry.get("um_per_px", {}).get(image_key) if isinstance(entry, dict) else None
    return None if value is None else float(value)


def image_um_per_px(sdata: Any, image_key: str) -> float | None:
    """Micrometres per full-resolution pixel of an image.

    Recorded in ``sdata.attrs`` (a slide file read by :func:`cpnn.io.read_wsi`), else derived from
    a table whose spots share its coordinate system; ``None`` when neither tells.
    """
    from spatialdata.transformations import get_transformation

    recorded = image_mpp(sdata, image_key)
    if recorded is not None:
        return recorded
    img = sdata.images[image_key]
    img_cs = list(get_transformation(img, get_all=True))
    for adata in sdata.tables.values():
        try:
            regions, _, _ = table_regions(adata)
        except CpnnError:
            continue
        diameter = table_spot_diameter_um(adata) or known_spot_diameter_um(sdata, adata)
        for region in regions:
            if region not in sdata.shapes:
                continue
            shapes = sdata.shapes[region]
            common = [cs for cs in get_transformation(shapes, get_all=True) if cs in img_cs]
            if not common:
                continue
            try:
                um_unit = _um_per_unit(adata, region, spot_units(shapes), diameter)
            except CpnnError:
                continue
            return um_unit * _scale(_affine(img, common[0])) / _scale(_affine(shapes, common[0]))
    return None


def table_spot_diameter_um(adata: AnnData) -> float | None:
    """The spot (or tile) side recorded by cpnn in ``uns["cpnn_spatial"]``, else ``None``."""
    spatial = adata.uns.get(SPATIAL)
    if isinstance(spatial, dict) and spatial.get("spot_diameter_um"):
        return float(spatial["spot_diameter_um"])
    return None
