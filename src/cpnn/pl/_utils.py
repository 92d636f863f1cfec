"""Shared plumbing of the plotting functions: name checks, saving, what to return."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._errors import CpnnError


def check_names(wanted: Sequence[str] | None, valid: Sequence[str], *, argument: str, what: str) -> list[str]:
    """``wanted`` (default all ``valid``), or a clear error listing the valid names."""
    valid = [str(v) for v in valid]
    if wanted is None:
        return valid
    wanted = [wanted] if isinstance(wanted, str) else [str(w) for w in wanted]
    unknown = [w for w in wanted if w not in valid]
    if unknown:
        shown = ", ".join(valid[:30]) + (" ..." if len(valid) > 30 else "")
        raise CpnnError(f"{argument}: unknown {what} {unknown}; valid {what}s are: {shown}.")
    if not wanted:
        raise CpnnError(f"{argument} is empty; pass at least one {what}.")
    return wanted


def new_figure(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def finish(fig: Figure, ax: Axes | None, save: str | Path | None) -> Figure | Axes:
    """Save when asked; return the Axes when the caller passed one, else the Figure."""
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    return ax if ax is not None else fig


def label_colorbars(fig: Figure, label: str) -> None:
    """Give every colour bar of ``fig`` a label."""
    for a in fig.axes:
        cbar = getattr(a, "_colorbar", None)
        if cbar is not None:
            cbar.set_label(label)
