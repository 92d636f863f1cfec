"""Shared plumbing of the plotting functions: name checks, saving, what to return."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import matplotlib.pyplot as plt
import scanpy as sc
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._errors import CpnnError

F = TypeVar("F", bound=Callable)

#: The numpydoc entries of scanpy's figure convention, shared by every ``cp.pl`` function.
DOC_SHOW_SAVE = """\
show
    Draw the figure and return nothing (``None`` follows ``sc.settings.autoshow``); ``False`` returns the Axes.
save
    A path, or ``True`` / a suffix such as ``"_B4.png"`` (written to ``sc.settings.figdir``).
return_fig
    Return the Figure.
table_key
    Key of the table."""


def doc_show_save(func: F) -> F:
    """Put :data:`DOC_SHOW_SAVE` where the docstring of ``func`` says ``{show_save}`` (as scanpy's ``_doc_params``)."""
    func.__doc__ = re.sub(
        r"^( *)\{show_save\}$", lambda m: textwrap.indent(DOC_SHOW_SAVE, m.group(1)), func.__doc__, flags=re.M
    )
    return func


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


def save_path(name: str, save: str | Path | bool) -> Path:
    """Where ``save=`` writes a figure: a path as given, or scanpy's form in ``sc.settings.figdir``.

    scanpy's form is ``True`` (``f"{name}.{file_format_figs}"``) or a string starting with ``_`` or
    ``.`` appended to the name (``save="_B4.png"`` writes ``proportions_B4.png``).
    """
    if save is True:
        return Path(sc.settings.figdir) / f"{name}.{sc.settings.file_format_figs}"
    text = str(save)
    if isinstance(save, str) and text.startswith(("_", ".")):
        suffix = Path(text).suffix
        if suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
            text, suffix = text, f".{sc.settings.file_format_figs}"
        else:
            text = text[: -len(suffix)]
        return Path(sc.settings.figdir) / f"{name}{text}{suffix}"
    return Path(save)


def finish(
    fig: Figure,
    ax: Axes | None,
    *,
    name: str,
    show: bool | None,
    save: str | Path | bool | None,
    return_fig: bool,
) -> Figure | Axes | list[Axes] | None:
    """Save when asked, then return what scanpy's convention says.

    The Figure with ``return_fig``; else draw it (``show=None`` follows ``sc.settings.autoshow``)
    and return nothing, or return the Axes with ``show=False``. A notebook draws each figure once.
    """
    if save:
        path = save_path(name, save)
        path.parent.mkdir(parents=True, exist_ok=True)
        # sc.settings.set_figure_params(dpi_save=...) sets matplotlib's savefig.dpi; 150 when nobody set it
        dpi = plt.rcParams["savefig.dpi"]
        fig.savefig(path, dpi=150 if dpi == "figure" else dpi, bbox_inches="tight")
    if return_fig:
        return fig
    if (sc.settings.autoshow if show is None else show) and ax is None:
        plt.show()
        return None
    if ax is not None:
        return ax
    axes = [a for a in fig.axes if a.get_label() != "<colorbar>" and not getattr(a, "_colorbar", None)]
    return axes[0] if len(axes) == 1 else axes
