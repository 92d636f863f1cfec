"""cp.pp.aggregate_bins: Visium HD square bins summed into coarser square pseudo-spots."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._core import SPATIAL, counts_dtype, is_spatialdata
from .._core import bin_size_um as bin_size_of
from .._errors import CpnnError
from ..data._regions import check_one_bin_size, square_side, table_regions

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData


def bin_tables(sdata: Any) -> dict[str, float]:
    """Tables of square bins and their bin size in micrometres (``square_002um`` -> 2.0), finest first."""
    found = {}
    for key, table in sdata.tables.items():
        size = bin_size_of(key)
        spatial = table.uns.get(SPATIAL)
        if size is None and isinstance(spatial, dict) and spatial.get("bin_size_um"):
            size = float(spatial["bin_size_um"])
        if size is not None:
            found[key] = size
    return dict(sorted(found.items(), key=lambda kv: kv[1]))


def aggregate_bins(
    sdata: SpatialData,
    *,
    bin_size_um: float,
    table_key: str | None = None,
    min_fill: float = 0.5,
    key_added: str | None = None,
) -> str:
    """Sum fine square bins (Visium HD) into square pseudo-spots of ``bin_size_um``, for training.

    Bins are grouped on a grid ``bin_size_um / source`` bins wide, aligned with the source bins;
    counts are summed and each pseudo-spot becomes a square of the new size, in the same
    coordinate systems as the bins, so that :func:`cpnn.tl.fit` reads one patch per pseudo-spot.
    Predictions can then be made at any bin size (``cp.tl.predict(sdata, model, table_key=...)``).

    Parameters
    ----------
    sdata
        SpatialData with square-bin tables, as :func:`spatialdata_io.visium_hd` builds them.
    bin_size_um
        Side of the pseudo-spots in micrometres; a whole multiple of the source bins' size.
    table_key
        Source table. Default: the finest bin table whose size divides ``bin_size_um``.
    min_fill
        Keep pseudo-spots covered by at least this fraction of their source bins (edges of the tissue).
    key_added
        Name of the new table (and, per region, of its shapes ``f"{region}_{key_added}"``).
        Default ``f"square_{bin_size_um:03d}um_from_{source:03d}um"``.

    Returns
    -------
    The key of the new table. Adds ``sdata.tables[key]``: summed counts, ``obs`` ``region``,
    ``location_id``, ``array_row``, ``array_col``, ``n_bins``; ``obsm["spatial"]`` (centres in the
    bins' units); ``uns["cpnn_spatial"]`` with ``bin_size_um`` and the source table.
    """
    import shapely
    from geopandas import GeoDataFrame
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation

    if not is_spatialdata(sdata):
        raise CpnnError(f"sdata must be a SpatialData with square-bin tables; got {type(sdata).__name__}.")
    if not (np.isfinite(bin_size_um) and bin_size_um > 0):
        raise CpnnError(f"bin_size_um={bin_size_um} must be a positive number of micrometres.")
    if not 0.0 <= float(min_fill) <= 1.0:
        raise CpnnError(f"min_fill={min_fill} must lie in [0, 1].")
    tables = bin_tables(sdata)
    if table_key is None:
        fits = [k for k, s in tables.items() if _multiple(bin_size_um, s) >= 2]
        if not fits:
            raise CpnnError(
                f"No bin table whose bins divide bin_size_um={bin_size_um}; bin tables are {tables or 'none'}. "
                "Pass table_key= and a bin_size_um that is a whole multiple of its bins."
            )
        table_key = fits[0]
    if table_key not in sdata.tables:
        raise CpnnError(f"table_key={table_key!r} is not a table of this SpatialData; tables are {list(sdata.tables)}.")
    source = tables.get(table_key)
    if source is None:
        raise CpnnError(
            f"Table {table_key!r} is not a table of square bins (its name carries no size like 'square_008um' "
            "and uns['cpnn_spatial'] no 'bin_size_um')."
        )
    k = _multiple(bin_size_um, source)
    if k < 2:
        raise CpnnError(
            f"bin_size_um={bin_size_um} is not a whole multiple (2 or more) of the {source:g} um bins of {table_key!r}."
        )
    src = sdata.tables[table_key]
    regions, region_key, instance_key = table_regions(src)
    key = key_added or f"square_{round(bin_size_um):03d}um_from_{round(source):03d}um"
    if key in sdata.tables:
        raise CpnnError(f"key_added={key!r} is already a table; choose another name.")
    start = logg.info(f"summing {src.n_obs} bins of {source:g} um into {bin_size_um:g} um pseudo-spots")
    X = src.X.tocsr() if sparse.issparse(src.X) else sparse.csr_matrix(np.asarray(src.X))
    new_tables, new_shapes = [], {}
    obs_region = src.obs[region_key].astype(str).to_numpy()
    for region in regions:
        rows = np.flatnonzero(obs_region == region)
        if not len(rows) or region not in sdata.shapes:
            continue
        shapes = sdata.shapes[region]
        side = square_side(shapes)
        if side is None:
            raise CpnnError(f"Region {region!r} of {table_key!r} is not made of square bins.")
        ids = src.obs[instance_key].to_numpy()[rows]
        check_one_bin_size(shapes, ids, f"Region {region!r} of {table_key!r}", what="pseudo-spots need")
        cent = shapes.loc[ids].geometry.centroid
        xy = np.c_[cent.x.to_numpy(), cent.y.to_numpy()]
        origin = xy.min(0) - side / 2.0
        cell = np.floor((xy - origin) / (k * side)).astype(np.int64)  # (col, row) of the coarse grid
        codes, group = np.unique(cell, axis=0, return_inverse=True)
        group = group.ravel()
        n_bins = np.bincount(group, minlength=len(codes))
        keep = n_bins >= max(1, int(np.ceil(min_fill * k * k)))
        if not keep.any():
            continue
        ind = sparse.csr_matrix((np.ones(len(rows)), (group, np.arange(len(rows)))), shape=(len(codes), len(rows)))
        summed = ind[keep] @ X[rows]
        summed = summed.astype(counts_dtype(summed))  # float32 unless a sum is beyond its exact whole numbers
        codes, n_bins = codes[keep], n_bins[keep]
        x0 = origin[0] + codes[:, 0] * k * side
        y0 = origin[1] + codes[:, 1] * k * side
        new_region = f"{region}_{key}"
        geo = GeoDataFrame(geometry=shapely.box(x0, y0, x0 + k * side, y0 + k * side), index=np.arange(len(codes)))
        new_shapes[new_region] = ShapesModel.parse(geo, transformations=dict(get_transformation(shapes, get_all=True)))
        obs = pd.DataFrame(
            {
                "region": new_region,
                "location_id": np.arange(len(codes)),
                "array_row": codes[:, 1],
                "array_col": codes[:, 0],
                "n_bins": n_bins,
            },
            index=[f"{region}_{r}_{c}" for c, r in codes],
        )
        a = AnnData(sparse.csr_matrix(summed), obs=obs, var=pd.DataFrame(index=src.var_names))
        a.obsm["spatial"] = np.c_[x0 + k * side / 2.0, y0 + k * side / 2.0]
        new_tables.append(a)
    if not new_tables:
        raise CpnnError(f"No pseudo-spot holds min_fill={min_fill} of its bins; lower min_fill.")
    import anndata as ad

    table = ad.concat(new_tables) if len(new_tables) > 1 else new_tables[0]
    table.obs["region"] = pd.Categorical(table.obs["region"], categories=list(new_shapes))
    table.uns[SPATIAL] = {
        "spot_diameter_um": float(bin_size_um),
        "bin_size_um": float(bin_size_um),
        "aggregated_from": table_key,
    }
    table = TableModel.parse(table, region=list(new_shapes), region_key="region", instance_key="location_id")
    for name, geo in new_shapes.items():
        sdata.shapes[name] = geo
    sdata.tables[key] = table
    logg.info(
        f"    {table.n_obs} pseudo-spots of {bin_size_um:g} um", time=start,
        deep=f"added\n    {list(new_shapes)} (sdata.shapes)\n    {key!r} (sdata.tables)",
    )  # fmt: skip
    return key


def _multiple(target: float, size: float) -> int:
    """``target / size`` when it is a whole number, else 0."""
    ratio = float(target) / float(size)
    return round(ratio) if abs(ratio - round(ratio)) < 1e-6 else 0
