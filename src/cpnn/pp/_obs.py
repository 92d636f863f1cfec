"""cp.pp.proportions_to_obs: composition weights as obs columns, for tools that cannot read obsm."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anndata import AnnData
from scanpy import logging as logg

from .._core import get_proportions, get_table, return_copy, uns_cpnn, valid_name
from .._errors import CpnnError

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData


def proportions_to_obs(
    data: AnnData | SpatialData,
    *,
    key: str = "cpnn_proportions",
    prefix: str = "",
    table_key: str = "table",
    copy: bool = False,
) -> AnnData | SpatialData | None:
    """Copy the per-spot cell-type proportions from ``obsm[key]`` into ``obs`` columns named after the cell types.

    For spatialdata-plot (``color="T-cells"``), scanpy's embedding plots and any tool that colours
    by ``obs`` columns, as cell2location users know it. A name is kept as it is wherever the zarr
    format allows; spatialdata accepts only ``[A-Za-z0-9_.-]`` in column names, so other characters
    become ``_`` (``"Cancer Epithelial"`` -> ``"Cancer_Epithelial"``) and the object can still be
    written with ``sdata.write``. ``uns["cpnn"]["obs_columns"]`` maps each column back to its
    ``obsm`` key and cell type, so nothing of the original name is lost.

    Parameters
    ----------
    data
        AnnData or SpatialData with ``obsm[key]`` from :func:`cpnn.tl.predict` or :func:`cpnn.pp.deconvolve`.
    key
        ``obsm`` key of the proportions (DataFrame, columns = cell types).
    prefix
        Column prefix (default none: the cell types' names), e.g. ``"cpnn_"`` to keep two
        compositions side by side, or when a cell type shares its name with an ``obs`` column.
    table_key
        Key of the table.
    copy
        Return a copy instead of writing into ``data``.

    Returns
    -------
    ``None``, or a copy with ``copy=True``. Adds ``obs[f"{prefix}{cell_type}"]`` (float, NaN for
    spots without a prediction) and ``uns["cpnn"]["obs_columns"]``.
    """
    adata = get_table(data, table_key)
    props = get_proportions(adata, key)
    cols = [valid_name(f"{prefix}{c}") for c in props.columns]
    if len(set(cols)) != len(cols):
        raise CpnnError(
            f"The cell types of obsm[{key!r}] give clashing column names {cols} once made valid for spatialdata; "
            "rename them so that they differ in letters or digits."
        )
    written = uns_cpnn(adata).get("obs_columns", {})
    clash = [c for c in cols if c in adata.obs.columns and c not in written]
    if clash:
        raise CpnnError(
            f"obs already has column(s) {clash} that proportions_to_obs did not write; pass a prefix "
            f"(e.g. prefix={valid_name(key) + '_'!r}) so that they are kept."
        )
    other = sorted({str(written[c][0]) for c in cols if c in written and str(written[c][0]) != key})
    if other:
        raise CpnnError(
            f"obs columns {[c for c in cols if c in written][:4]} hold the composition of obsm[{other[0]!r}]; writing "
            f"obsm[{key!r}] there would replace it. Pass a prefix (e.g. prefix={valid_name(key) + '_'!r}) to keep both."
        )
    data = return_copy(data, copy)
    adata = get_table(data, table_key)
    mapping = uns_cpnn(adata).setdefault("obs_columns", {})
    for c, name in zip(props.columns, cols, strict=True):
        adata.obs[name] = props[c].to_numpy(float)
        mapping[name] = [key, str(c)]
    logg.info(f"added {len(cols)} obs columns", deep="added\n    " + ", ".join(repr(c) for c in cols) + " (adata.obs)")
    return data if copy else None
