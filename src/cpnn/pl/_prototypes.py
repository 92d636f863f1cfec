"""cp.pl.prototypes: the cell-type prototypes over each type's top marker genes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._core import PROTOTYPES, SELECTED, get_table, in_reference_column, panel_prototypes
from .._errors import CpnnError
from ..tl import CPNN
from ._utils import check_names, doc_show_save, finish, new_figure

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from anndata import AnnData
    from spatialdata import SpatialData


def prototype_frame(data: Any, *, key: str, table_key: str) -> pd.DataFrame:
    """Prototypes as a genes x cell types DataFrame, from a model or from the table's ``varm``."""
    if isinstance(data, CPNN):
        if data.prototypes is None:
            raise CpnnError("This model has the direct head: it has no prototypes to plot.")
        return pd.DataFrame(data.prototypes, index=data.genes, columns=data.cell_types)
    adata = get_table(data, table_key)
    if key not in adata.varm:
        raise CpnnError(f"key={key!r} is not in varm; run cp.pp.build_prototypes first. varm keys: {list(adata.varm)}.")
    genes = list(adata.var_names)
    col = in_reference_column(key)
    if col in adata.var:
        genes = list(adata.var_names[adata.var[col].to_numpy(bool)])
    P, types = panel_prototypes(adata, genes, key)
    return pd.DataFrame(P.T, index=genes, columns=types)


def top_markers(profiles: pd.DataFrame, n: int) -> list[str]:
    """The ``n`` genes of each type with the highest log-ratio to the mean of the other types."""
    logp = np.log1p(profiles / profiles.sum(0) * 1e4)
    chosen: list[str] = []
    for t in profiles.columns:
        others = logp.drop(columns=t).mean(1) if profiles.shape[1] > 1 else 0.0
        score = (logp[t] - others).drop(index=chosen, errors="ignore")
        chosen += list(score.sort_values(ascending=False).index[:n])
    return chosen


@doc_show_save
def prototypes(
    data: AnnData | SpatialData,
    *,
    genes: str | Sequence[str] | None = None,
    n_markers: int = 5,
    key: str = PROTOTYPES,
    panel_only: bool = True,
    cmap: str = "RdBu_r",
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
    table_key: str = "table",
) -> Figure | Axes | None:
    """Heatmap of the prototypes (z-scored per gene across cell types) over marker genes.

    Parameters
    ----------
    data
        AnnData or SpatialData with prototypes from :func:`cpnn.pp.build_prototypes`, or a
        trained :class:`cpnn.CPNN` (its learned prototypes).
    genes
        Genes to show; default the ``n_markers`` top markers of each cell type (highest log-ratio
        of the type's prototype, normalised to 10,000, to the mean of the other types).
    n_markers
        Markers per cell type when ``genes`` is not given.
    key
        ``varm`` key of the prototypes.
    panel_only
        Choose markers among the predicted panel (``var["cpnn_selected"]``) when there is one.
    cmap
        Matplotlib colour map.
    figsize
        Figure size in inches (width, height).
    ax
        An Axes to draw into (default: a new figure).
    {show_save}

    Returns
    -------
    ``None``, the Axes (``show=False``, or ``ax`` when one was passed) or the Figure (``return_fig=True``).
    """
    profiles = prototype_frame(data, key=key, table_key=table_key)
    if genes is None:
        if n_markers < 1:
            raise CpnnError(f"n_markers={n_markers} must be at least 1.")
        pool = profiles
        if panel_only and not isinstance(data, CPNN):
            adata = get_table(data, table_key)
            if SELECTED in adata.var:
                sel = adata.var_names[adata.var[SELECTED].to_numpy(bool)]
                pool = profiles.loc[profiles.index.intersection(sel, sort=False)]
                if pool.empty:
                    pool = profiles
        genes = top_markers(pool, n_markers)
    else:
        genes = check_names(genes, list(profiles.index), argument="genes", what="gene")
    sub = np.log1p(profiles.loc[genes] / profiles.sum(0) * 1e4)
    z = sub.sub(sub.mean(1), axis=0).div(sub.std(1, ddof=0).replace(0, 1.0), axis=0)
    k, g = z.shape[1], z.shape[0]
    fig, ax_ = new_figure(ax, figsize or (max(6.0, 0.22 * g + 2.5), max(2.5, 0.32 * k + 1.5)))
    vmax = float(np.nanmax(np.abs(z.to_numpy()))) or 1.0
    im = ax_.imshow(z.T.to_numpy(), aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax_.set_xticks(range(g), labels=genes, rotation=90, fontsize=7)
    ax_.set_yticks(range(k), labels=list(z.columns), fontsize=8)
    ax_.set_title("cell-type prototypes over marker genes")
    cbar = fig.colorbar(im, ax=ax_, fraction=0.03, pad=0.01)
    cbar.set_label("z-score of log1p CP10k across types")
    return finish(fig, ax, name="prototypes", show=show, save=save, return_fig=return_fig)
