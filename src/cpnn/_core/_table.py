"""Access to the annotated table of an ``AnnData | SpatialData`` input."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import CpnnError
from ._keys import SPATIAL, UNS, bin_size_um


def is_spatialdata(data: Any) -> bool:
    """Whether ``data`` is a :class:`~spatialdata.SpatialData` (without importing it eagerly)."""
    return type(data).__name__ == "SpatialData" and hasattr(data, "tables")


def get_table(data: AnnData | Any, table_key: str = "table") -> AnnData:
    """Return the annotated table of ``data``.

    Parameters
    ----------
    data
        An AnnData, or a SpatialData holding the table under ``table_key``.
    table_key
        Key of the table in ``data.tables``.
    """
    if isinstance(data, AnnData):
        return data
    if is_spatialdata(data):
        if table_key not in data.tables:
            bins = sorted(k for k in data.tables if bin_size_um(k) is not None)
            if bins:
                raise CpnnError(
                    f"table_key={table_key!r} is not a table of this SpatialData; it holds Visium HD bins {bins}. "
                    "Pass table_key=<bin table> to predict at that bin size, or build training pseudo-spots with "
                    "cp.pp.aggregate_bins(sdata, bin_size_um=...) and pass the key it returns."
                )
            raise CpnnError(
                f"table_key={table_key!r} is not a table of this SpatialData; "
                f"its tables are {list(data.tables)}. Pass table_key=<one of them>."
            )
        return data.tables[table_key]
    raise CpnnError(
        f"data must be an AnnData or a SpatialData, got {type(data).__name__}. "
        "Read Visium data with spatialdata_io.visium(...) or pass an AnnData."
    )


def return_copy(data: Any, copy: bool) -> Any:
    """Return a deep copy of ``data`` when ``copy`` is true, else ``data`` itself."""
    if not copy:
        return data
    if isinstance(data, AnnData):
        return data.copy()
    return deepcopy(data)


def uns_cpnn(adata: AnnData) -> dict:
    """The ``uns["cpnn"]`` dict of ``adata``, created when missing."""
    if UNS not in adata.uns or not isinstance(adata.uns[UNS], dict):
        adata.uns[UNS] = {}
    return adata.uns[UNS]


def to_uns(obj: Any) -> Any:
    """Make ``obj`` storable in ``uns`` (h5ad/zarr): ``None`` becomes ``""``, recursively."""
    if obj is None:
        return ""
    if isinstance(obj, dict):
        return {str(k): to_uns(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_uns(v) for v in obj]
    return obj


def uns_list(value: Any) -> list[str]:
    """A list of names stored in ``uns`` as strings: h5ad and zarr give lists back as arrays, absent is empty."""
    if value is None or isinstance(value, str):
        return [] if not value else [value]
    return [str(v) for v in np.asarray(value, dtype=object).ravel()]


def get_proportions(adata: AnnData, key: str) -> pd.DataFrame:
    """The composition weights in ``obsm[key]`` (a DataFrame, cell types as columns), or a clear error."""
    if key not in adata.obsm:
        raise CpnnError(f"key={key!r} is not in obsm; run cp.tl.predict first. obsm keys: {list(adata.obsm)}.")
    props = adata.obsm[key]
    if not isinstance(props, pd.DataFrame):
        raise CpnnError(f"obsm[{key!r}] must be a DataFrame with the cell types as columns.")
    return props


def is_tiles_table(adata: AnnData) -> bool:
    """Whether a table holds tissue tiles from :func:`cpnn.pp.tile` (no measured genes)."""
    spatial = adata.uns.get(SPATIAL)
    return isinstance(spatial, dict) and "tile_size_um" in spatial
