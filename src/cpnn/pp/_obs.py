"""cp.pp.proportions_to_obs: composition weights as obs columns, for tools that cannot read obsm."""

from __future__ import annotations

from typing import Any

from anndata import AnnData
from scanpy import logging as logg

from .._core import get_proportions, get_table, return_copy, valid_name
from .._errors import CpnnError


def proportions_to_obs(
    data: AnnData | Any,
    *,
    key: str = "cpnn_proportions",
    prefix: str | None = None,
    table_key: str = "table",
    copy: bool = False,
) -> AnnData | Any | None:
    """Copy the per-spot cell-type proportions from ``obsm[key]`` into ``obs`` columns.

    For spatialdata-plot (``color="cpnn_proportions_T-cells"``), scanpy's embedding plots and
    any tool that colours by ``obs`` columns. Column names keep to what spatialdata allows
    (``[A-Za-z0-9_.-]``, so ``"Cancer Epithelial"`` becomes ``cpnn_proportions_Cancer_Epithelial``),
    so the object can still be written with ``sdata.write``.

    Parameters
    ----------
    data
        AnnData or SpatialData with ``obsm[key]`` from :func:`cpnn.tl.predict`.
    key
        ``obsm`` key of the proportions (DataFrame, columns = cell types).
    prefix
        Column prefix (default ``f"{key}_"``).
    table_key
        Key of the table.
    copy
        Return a copy instead of writing into ``data``.

    Returns
    -------
    ``None``, or a copy with ``copy=True``. Adds ``obs[f"{prefix}{cell_type}"]`` (float, NaN for
    spots without a prediction; characters other than ``[A-Za-z0-9_.-]`` replaced by ``_``).
    """
    adata = get_table(data, table_key)
    props = get_proportions(adata, key)
    prefix = f"{key}_" if prefix is None else prefix
    data = return_copy(data, copy)
    adata = get_table(data, table_key)
    cols = [valid_name(f"{prefix}{c}") for c in props.columns]
    if len(set(cols)) != len(cols):
        raise CpnnError(
            f"The cell types of obsm[{key!r}] give clashing column names {cols} once made valid for spatialdata; "
            "rename them so that they differ in letters or digits."
        )
    for c, name in zip(props.columns, cols, strict=True):
        adata.obs[name] = props[c].to_numpy(float)
    logg.info(f"added {len(cols)} obs columns", deep="added\n    " + ", ".join(repr(c) for c in cols) + " (adata.obs)")
    return data if copy else None
