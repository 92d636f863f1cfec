"""cp.pl.correlations and cp.pl.history: how accurate a model is, and how its training went."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._core import PREDICTION, get_table, per_gene_metrics, uns_cpnn
from .._errors import CpnnError
from ..tl import CPNN
from ._utils import doc_show_save, finish, new_figure

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from anndata import AnnData
    from spatialdata import SpatialData

_SUMMARY = ("mean", "pooled")


def _per_group(df: pd.DataFrame, metric: str) -> dict[str, np.ndarray]:
    """Per-gene values of ``metric`` for each group column of an evaluate() table, then pooled."""
    cols = [c for c in df.columns if c.startswith(f"{metric}_") and c.removeprefix(f"{metric}_") not in _SUMMARY]
    out = {c.removeprefix(f"{metric}_"): df[c].to_numpy(float) for c in cols}
    if f"{metric}_pooled" in df:
        out["pooled"] = df[f"{metric}_pooled"].to_numpy(float)
    if not out:
        raise CpnnError(f"The results have no {metric!r} columns; pass tables from cp.tl.evaluate.")
    return out


@doc_show_save
def correlations(
    data: AnnData | SpatialData,
    *,
    layers: str | Sequence[str] = PREDICTION,
    metric: str = "spearman",
    groupby: str | None = "section",
    kind: str = "violin",
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
    table_key: str = "table",
) -> Figure | Axes | None:
    """Distribution of the per-gene correlations per group (and pooled), for one or several methods.

    Parameters
    ----------
    data
        AnnData or SpatialData with prediction layers (evaluated on the fly, nothing is written),
        a DataFrame from :func:`cpnn.tl.evaluate`, or a mapping of method name -> such DataFrame
        (e.g. ``{"cpnn": ..., "direct": ...}``).
    layers
        Prediction layers to compare when ``data`` is an AnnData/SpatialData.
    metric
        ``"spearman"`` or ``"pearson"``.
    groupby
        ``obs`` column of the groups (on-the-fly evaluation only).
    kind
        ``"violin"`` or ``"box"``. The mean over genes is marked and written above each group.
    figsize
        Figure size in inches (width, height).
    ax
        An Axes to draw into (default: a new figure).
    {show_save}

    Returns
    -------
    ``None``, the Axes (``show=False``, or ``ax`` when one was passed) or the Figure (``return_fig=True``).
    """
    if metric not in ("spearman", "pearson"):
        raise CpnnError(f"metric={metric!r}; use 'spearman' or 'pearson'.")
    if kind not in ("violin", "box"):
        raise CpnnError(f"kind={kind!r}; use 'violin' or 'box'.")
    if isinstance(data, pd.DataFrame):
        results = {"cpnn": data}
    elif isinstance(data, Mapping):
        results = dict(data)
        bad = [k for k, v in results.items() if not isinstance(v, pd.DataFrame)]
        if bad:
            raise CpnnError(f"data[{bad[0]!r}] is not a DataFrame from cp.tl.evaluate.")
    else:
        adata = get_table(data, table_key)
        names = [layers] if isinstance(layers, str) else list(layers)
        missing = [n for n in names if n not in adata.layers]
        if missing:
            raise CpnnError(f"layers={missing} are not layers of the table; layers: {list(adata.layers)}.")
        results = {
            n: per_gene_metrics(
                adata, layer=n, groupby=groupby, genes=None, spots=None, truth_layer=None, normalize=True
            )[0]
            for n in names
        }
    if not results:
        raise CpnnError("data holds no results to plot.")
    values = {m: _per_group(df, metric) for m, df in results.items()}
    groups = list(dict.fromkeys(g for v in values.values() for g in v))
    methods = list(values)
    width = 0.8 / len(methods)
    fig, ax_ = new_figure(ax, figsize or (max(4.0, 1.1 * len(groups) * max(1, len(methods) * 0.7) + 1.5), 3.8))
    colors = [f"C{i}" for i in range(len(methods))]
    for i, m in enumerate(methods):
        pos, data_ = [], []
        for j, g in enumerate(groups):
            v = values[m].get(g)
            if v is None:
                continue
            v = v[np.isfinite(v)]
            if len(v) == 0:
                continue
            pos.append(j + (i - (len(methods) - 1) / 2) * width)
            data_.append(v)
        if not data_:
            continue
        if kind == "violin":
            parts = ax_.violinplot(data_, positions=pos, widths=width * 0.9, showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(colors[i])
                body.set_alpha(0.45)
        else:
            ax_.boxplot(
                data_,
                positions=pos,
                widths=width * 0.7,
                patch_artist=True,
                showfliers=False,
                boxprops={"facecolor": colors[i], "alpha": 0.45},
            )
        means = [float(np.mean(v)) for v in data_]
        ax_.scatter(pos, means, color=colors[i], edgecolor="k", zorder=3, s=22, label=f"{m} (mean marked)")
        for p, mu in zip(pos, means, strict=True):
            ax_.annotate(f"{mu:.2f}", (p, mu), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax_.axhline(0, color="0.5", lw=0.6)
    ax_.set_xticks(range(len(groups)), labels=groups)
    ax_.set_xlim(-0.6, len(groups) - 0.4)
    ax_.set_ylabel(f"per-gene {metric.capitalize()}")
    ax_.set_xlabel("held-out group (pooled: all spots together)")
    ax_.set_title(f"{metric.capitalize()} between predicted and measured expression, per gene")
    ax_.legend(fontsize=7, loc="best")
    return finish(fig, ax, name="correlations", show=show, save=save, return_fig=return_fig)


@doc_show_save
def history(
    data: AnnData | SpatialData,
    *,
    key: str | None = None,
    figsize: tuple[float, float] = (5.0, 3.5),
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
    table_key: str = "table",
) -> Figure | Axes | None:
    """Training and validation loss per epoch, the training loss's parts, and the epoch whose weights were kept.

    The parts (the data term and each weighted regulariser, e.g. the composition loss) are drawn
    dotted when the fit recorded them (cpnn 0.3 on); the y axis turns logarithmic when they differ
    by more than a factor of 100.

    Parameters
    ----------
    data
        A trained :class:`cpnn.CPNN`, or the AnnData/SpatialData it was fitted on.
    key
        Which fit of the table (``cp.tl.fit``'s ``key_added``); default the latest.
    figsize
        Figure size in inches (width, height).
    ax
        An Axes to draw into (default: a new figure).
    {show_save}

    Returns
    -------
    ``None``, the Axes (``show=False``, or ``ax`` when one was passed) or the Figure (``return_fig=True``).
    """
    best = None
    if isinstance(data, CPNN):
        records = pd.DataFrame(data.history)
    else:
        info = uns_cpnn(get_table(data, table_key))
        if key is not None:
            fits = info.get("fits", {})
            if key not in fits:
                raise CpnnError(f"key={key!r} is not a fit of this table; fits are {list(fits)}.")
            info = {"history": fits[key]["history"], "fit": fits[key]}
        if "history" not in info:
            raise CpnnError("No training history in uns['cpnn']; fit a model with cp.tl.fit first.")
        records = pd.DataFrame({k: np.asarray(v, float) for k, v in info["history"].items()})
        best = info.get("fit", {}).get("best_epoch")
    if records.empty or "train_loss" not in records:
        raise CpnnError("The training history is empty.")
    fig, ax_ = new_figure(ax, figsize)
    ax_.plot(records["epoch"], records["train_loss"], label="training loss (with regularisers)")
    # its parts (recorded since 0.3), each already weighted; those that were switched off are left out
    parts = [c for c in records if c.startswith("train_") and c != "train_loss" and records[c].abs().max() > 0]
    if len(parts) > 1:
        for c in parts:
            ax_.plot(records["epoch"], records[c], lw=0.8, ls=":", label=f"  part: {c.removeprefix('train_')}")
        values = records[[*parts, "train_loss"]].to_numpy(float)
        positive = values[np.isfinite(values) & (values > 0)]
        if len(positive) and positive.max() / positive.min() > 100:  # parts on very different scales
            ax_.set_yscale("log")
            ax_.set_ylim(bottom=max(float(positive.min()), float(positive.max()) * 1e-5))  # 5 decades at most
    if "val_loss" in records and records["val_loss"].notna().any():
        ax_.plot(records["epoch"], records["val_loss"], label="validation criterion (data term)")
        if best is None:
            best = int(records.loc[records["val_loss"].idxmin(), "epoch"])
    if best:
        ax_.axvline(best, color="0.4", ls="--", lw=0.8, label=f"kept weights (epoch {best})")
    ax_.set_xlabel("epoch")
    ax_.set_ylabel("loss")
    ax_.set_title("training history")
    ax_.legend(fontsize=8)
    return finish(fig, ax, name="history", show=show, save=save, return_fig=return_fig)
