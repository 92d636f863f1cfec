"""Composition maps over the H&E: per cell type, the dominant type, and image-predicted vs deconvolved."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._core import OFF_SHARE, UNEXPLAINED, columnwise_pearson, get_proportions, get_table, proportions_key, uns_cpnn
from .._errors import CpnnError
from ._spatial import draw_spots, resolve_region, scalebar, with_legacy_layout
from ._utils import check_names, doc_show_save, finish

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

#: Cell types whose proportion stays below this in the region are named, not drawn.
MIN_SHARE = 0.05
#: Colour map of composition maps: light at 0, so the H&E stays visible under low proportions.
COMPOSITION_CMAP = "YlGnBu"


def _share(mask: np.ndarray) -> str:
    """The share of spots in ``mask`` as a legend reads it: "<1%" rather than a misleading "0%"."""
    share = float(np.mean(mask))
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def source_of(adata: Any, key: str) -> str:
    """How the compositions in ``obsm[key]`` were obtained, for titles."""
    info = uns_cpnn(adata)
    if key.removesuffix("_fine") in info.get("deconvolution", {}):
        return "deconvolved from the counts"
    predictions = info.get("predictions", {})
    if any(proportions_key(k) == key.removesuffix("_fine") for k in predictions) or key.endswith("_proportions"):
        return "predicted from H&E"
    return ""


def _region_values(
    data: Any, key: str, region: str | None, table_key: str
) -> tuple[Any, pd.DataFrame, str, np.ndarray]:
    adata = get_table(data, table_key)
    props = get_proportions(adata, key)
    has = props.notna().all(axis=1).to_numpy()
    name, mask = resolve_region(adata, region, prefer=has)
    mask = mask & has
    if not mask.any():
        raise CpnnError(f"Region {name!r} has no compositions in obsm[{key!r}]; predict (or deconvolve) it first.")
    return adata, props, name, mask


@doc_show_save
def proportions(
    data: AnnData | SpatialData,
    *,
    cell_types: str | Sequence[str] | None = None,
    region: str | None = None,
    key: str = "cpnn_proportions",
    scale: str = "panel",
    min_share: float = MIN_SHARE,
    ncols: int = 4,
    cmap: str = COMPOSITION_CMAP,
    vmax: float | None = None,
    alpha: float = 0.85,
    img_alpha: float | None = None,
    image_key: str | None = None,
    max_px: int = 1500,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
    table_key: str = "table",
) -> Figure | Axes | list[Axes] | None:
    """Composition maps: one panel per cell type, spot proportions over the H&E of one region.

    Drawn by :func:`squidpy.pl.spatial_scatter` on a small view holding a cropped, downsampled
    copy of the image (a pyramid level when the image has one); the full-resolution image is never
    loaded and ``data`` is not modified. Cell types whose proportion never exceeds ``min_share`` in
    the region are named under the panels instead of being drawn on a colour scale stretched to
    their tiny range. A micrometre scale bar sits in each panel.

    Parameters
    ----------
    data
        SpatialData with images (spots over the H&E), or an AnnData (spots only, from
        ``obsm["spatial"]``) with ``obsm[key]`` from :func:`cpnn.tl.predict` or :func:`cpnn.pp.deconvolve`.
    cell_types
        Cell types to draw (default all).
    region
        Region or section to draw (default the first one with compositions).
    key
        ``obsm`` key of the proportions (a DataFrame whose columns are the cell types).
    scale
        ``"panel"``: each panel's colour scale runs from 0 to its own maximum (stated in its colour
        bar); ``"shared"``: every panel from 0 to 1 with one colour bar, so panels compare by eye.
    min_share
        Cell types whose proportion stays below this in the region are named, not drawn (0: draw all).
    ncols
        Panels per row.
    cmap
        Colour map (default light at 0, so that the tissue stays visible where a type is absent).
    vmax
        Top of every panel's colour scale (overrides ``scale``).
    alpha
        Opacity of the spots, so that the tissue shows through.
    img_alpha
        Opacity of the H&E behind the spots.
    image_key
        Force this image element.
    max_px
        Longer side of the image drawn behind the spots, in pixels.
    figsize
        Figure size in inches.
    ax
        An Axes to draw one cell type into.
    {show_save}

    Returns
    -------
    ``None``, the Axes (``show=False``) or the Figure (``return_fig=True``).
    """
    if scale not in ("panel", "shared"):
        raise CpnnError(f"scale={scale!r}; use 'panel' (each panel to its maximum) or 'shared' (0 to 1).")
    adata, props, name, mask = _region_values(data, key, region, table_key)
    types = check_names(cell_types, list(props.columns), argument="cell_types", what="cell type")
    top = props.loc[mask, types].max()
    faint = [t for t in types if top[t] < min_share] if ax is None else []
    drawn = [t for t in types if t not in faint]
    if not drawn:
        raise CpnnError(
            f"Every cell type asked for stays below min_share={min_share} in region {name!r}; lower min_share."
        )
    if vmax is not None:
        highs, labels = vmax, f"proportion (0-{vmax:g})"
    elif scale == "shared":
        highs, labels = 1.0, "proportion (shared 0-1 scale)"
    else:
        highs = [float(top[t]) for t in drawn]
        labels = [f"proportion (this panel: 0-{h:.2f})" for h in highs]
    source = source_of(adata, key)
    note = None
    if faint:
        note = f"Below {min_share:.0%} everywhere in {name} (not drawn): " + ", ".join(
            f"{t} (max {top[t]:.3f})" for t in faint
        )
    fig = draw_spots(
        data,
        props.loc[:, drawn],
        mask,
        region=name,
        titles=list(drawn),
        colorbar_label=labels,
        ncols=ncols,
        cmap=cmap,
        vmin=0.0,
        vmax=highs,
        img_alpha=img_alpha,
        image_key=image_key,
        max_px=max_px,
        figsize=figsize,
        ax=ax,
        table_key=table_key,
        alpha=alpha,
        suptitle=None if ax is not None else f"Cell-type composition of {name}" + (f", {source}" if source else ""),
        note=note,
    )
    return finish(fig, ax, name="proportions", show=show, save=save, return_fig=return_fig)


@doc_show_save
def dominant(
    data: AnnData | SpatialData,
    *,
    region: str | None = None,
    key: str = "cpnn_proportions",
    groups: Mapping[str, Sequence[str]] | None = None,
    palette: str = "tab10",
    min_dominance: float = 0.0,
    img_alpha: float = 1.0,
    image_key: str | None = None,
    max_px: int = 1500,
    figsize: tuple[float, float] = (6.0, 5.0),
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
    table_key: str = "table",
) -> Figure | Axes | None:
    """The dominant cell type (or compartment) of each spot as one categorical map; lightness is its proportion.

    Every spot takes the colour of its largest share, drawn pale when that share is small and
    full when the spot is mostly of it, so a mixture reads as a light spot of its leading type.
    ``groups`` merges types into the compartments a pathologist reads before the largest share
    is taken: four immune types at 0.15 each are one immune compartment at 0.6, not four losers
    to epithelium at 0.4. ``min_dominance`` > 0 draws spots whose largest share is below it as
    open grey circles ("mixed"). The note under the map names the reference's cell types: tissue
    the reference has no type for (fat without adipocytes, say) is split among these unless the
    composition has an ``"unexplained"`` column (``cp.pp.deconvolve(unexplained="flat")``), drawn in
    grey.

    Parameters
    ----------
    data
        SpatialData with images, or an AnnData with ``obsm["spatial"]``, with ``obsm[key]``.
    region
        Region or section to draw (default: the first one with compositions).
    key
        ``obsm`` key of the proportions (a DataFrame whose columns are the cell types).
    groups
        Compartments to merge types into before the largest share is taken, e.g.
        ``{"immune": ["B-cells", "T-cells", "Myeloid", "Plasmablasts"], "stroma": ["CAFs", "PVL",
        "Endothelial"]}``; types in no group stay as they are.
    image_key
        Force this image element (default: the sharpest image covering the spots).
    max_px
        Longer side of the image drawn behind the spots, in pixels.
    img_alpha
        Opacity of the H&E behind the spots.
    palette
        Matplotlib colour map of the categories.
    min_dominance
        Largest share below which a spot is drawn as "mixed" (an open grey circle); 0 (default):
        every spot takes its leading type's colour, paler the smaller its share.
    figsize
        Figure size in inches (width, height).
    ax
        An Axes to draw into (default: a new figure).
    {show_save}

    Returns
    -------
    ``None``, the Axes (``show=False``) or the Figure (``return_fig=True``).
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, Rectangle

    adata, props, name, mask = _region_values(data, key, region, table_key)
    types = list(map(str, props.columns))
    props = merge_groups(props, groups)
    values = props.loc[mask]
    view = AnnData(obs=values.copy())
    layout = with_legacy_layout(data, view, mask, image_key=image_key, max_px=max_px, table_key=table_key)
    fig, ax_ = (ax.figure, ax) if ax is not None else plt.subplots(figsize=figsize)
    arr = values.to_numpy(float)
    winner = arr.argmax(1)
    share = arr.max(1)
    colours = plt.get_cmap(palette)(np.arange(arr.shape[1]) % plt.get_cmap(palette).N)
    for k, column in enumerate(values.columns):
        if str(column) == UNEXPLAINED:  # not a cell type: neutral grey, never a palette colour
            colours[k] = (0.45, 0.45, 0.45, 1.0)
    if layout.library_id is not None:
        info = view.uns["spatial"][layout.library_id]
        ax_.imshow(info["images"]["hires"], alpha=img_alpha)
        xy = np.asarray(view.obsm["spatial"])  # tissue_hires_scalef is 1: hires pixels
        radius = info["scalefactors"]["spot_diameter_fullres"] / 2
    else:
        xy = np.asarray(view.obsm["spatial"])
        gaps = np.diff(np.sort(xy[:, 0]))
        radius = float(np.median(gaps[gaps > 0])) / 2 if (gaps > 0).any() else 1.0
        ax_.invert_yaxis()
    square = layout.shape == "square"
    shapes = [
        Rectangle((x - radius, y - radius), 2 * radius, 2 * radius) if square else Circle((x, y), radius) for x, y in xy
    ]
    mixed = share < min_dominance
    # lightness, not transparency: a pale spot stays readable over dark tissue (a faint one did not)
    strength = np.clip(share, 0.15, 1.0)[:, None]
    face = colours[winner].copy()
    face[:, :3] = 1.0 - strength * (1.0 - face[:, :3])
    face[:, 3] = 0.95
    face[mixed] = (0.0, 0.0, 0.0, 0.0)
    edge = np.zeros_like(face)
    edge[mixed] = (0.35, 0.35, 0.35, 0.9)
    ax_.add_collection(PatchCollection(shapes, facecolors=face, edgecolors=edge, linewidths=0.6))
    ax_.set_xlim(xy[:, 0].min() - 3 * radius, xy[:, 0].max() + 3 * radius)
    ax_.set_ylim(xy[:, 1].max() + 3 * radius, xy[:, 1].min() - 3 * radius)
    ax_.set_aspect("equal")
    ax_.set_axis_off()
    present = sorted(set(winner[~mixed]))
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            color=colours[k],
            label=f"{props.columns[k]} ({_share((winner == k) & ~mixed)})",
        )
        for k in present
    ]
    if mixed.any():
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                ls="",
                markerfacecolor="none",
                markeredgecolor="0.35",
                label=f"mixed, none >= {min_dominance:.0%} ({_share(mixed)})",
            )
        )
    ax_.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    source = source_of(adata, key)
    what = "compartment" if groups else "cell type"
    ax_.set_title(
        f"Dominant {what}, {name}" + (f"\n{source}; paler = smaller share" if source else "; paler = smaller share"),
        fontsize=10,
    )
    if ax is None:
        fig.text(
            0.01, 0.005,
            f"Reference cell types: {', '.join(types)}{_grouping(groups)}. Tissue without a reference type "
            "(e.g. fat, when the reference has no adipocytes) is still split among these.",
            fontsize=7, ha="left", va="bottom", wrap=True,
        )  # fmt: skip
    scalebar(ax_, layout.um_per_px)
    return finish(fig, ax, name="dominant", show=show, save=save, return_fig=return_fig)


def merge_groups(props: pd.DataFrame, groups: Mapping[str, Sequence[str]] | None) -> pd.DataFrame:
    """``props`` with the types of each group summed into one column (the group's name); others kept."""
    if not groups:
        return props
    columns = [str(c) for c in props.columns]
    seen: dict[str, str] = {}
    for group, members in groups.items():
        members = [members] if isinstance(members, str) else list(members)
        unknown = [m for m in members if m not in columns]
        if unknown:
            raise CpnnError(
                f"groups[{group!r}] names {unknown}, which are not cell types of the composition: {columns}."
            )
        twice = [m for m in members if m in seen]
        if twice:
            raise CpnnError(f"{twice} are in groups {seen[twice[0]]!r} and {group!r}; give each type one group.")
        seen.update(dict.fromkeys(members, str(group)))
    out: dict[str, pd.Series] = {}
    for c, col in zip(columns, props.columns, strict=True):
        name = seen.get(c, c)
        out[name] = out[name] + props[col] if name in out else props[col].astype(float)
    return pd.DataFrame(out, index=props.index)


def _grouping(groups: Mapping[str, Sequence[str]] | None) -> str:
    if not groups:
        return ""
    return (
        " (merged: "
        + "; ".join(f"{g} = {' + '.join([m] if isinstance(m, str) else m)}" for g, m in groups.items())
        + ")"
    )


@doc_show_save
def compare_proportions(
    data: AnnData | SpatialData,
    *,
    keys: Sequence[str] = ("cpnn_proportions", "cpnn_deconvolution"),
    labels: Sequence[str] | None = None,
    cell_types: str | Sequence[str] | None = None,
    region: str | None = None,
    min_share: float = MIN_SHARE,
    cmap: str = COMPOSITION_CMAP,
    alpha: float = 0.85,
    image_key: str | None = None,
    max_px: int = 1000,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
    table_key: str = "table",
) -> Figure | list[Axes] | None:
    """Compositions from two (or more) sources side by side: one row per cell type, one column per source.

    Typically the image-predicted composition next to the deconvolution of the measured counts
    (:func:`cpnn.pp.deconvolve`). Every panel uses the shared 0..1 scale; each row's title gives
    the Pearson correlation between the first source and the others over the region's spots.

    Parameters
    ----------
    data
        SpatialData with images (or AnnData with ``obsm["spatial"]``) holding every ``obsm`` key.
    keys
        ``obsm`` keys of the compositions (DataFrames with the cell types as columns).
    labels
        Column titles (default: how each was obtained, else the key).
    cell_types
        Cell types to draw (default: those every source has).
    region
        Region or section to draw (default: the first one with compositions).
    min_share
        Cell types whose proportion stays below this in the region are named, not drawn (0: draw all).
    cmap
        Matplotlib colour map.
    alpha
        Opacity of the spots, so that the tissue shows through.
    image_key
        Force this image element (default: the sharpest image covering the spots).
    max_px
        Longer side of the image drawn behind the spots, in pixels.
    figsize
        Figure size in inches (width, height).
    {show_save}

    Returns
    -------
    ``None``, the Axes (``show=False``) or the Figure (``return_fig=True``).
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if len(keys) < 2:
        raise CpnnError("keys= needs at least two obsm keys to compare.")
    adata = get_table(data, table_key)
    frames = {k: get_proportions(adata, k) for k in keys}
    common = [c for c in frames[keys[0]].columns if all(c in f.columns for f in frames.values())]
    if not common:
        raise CpnnError(
            f"obsm{keys} share no cell type (their columns differ); compare compositions of the same types."
        )
    has = np.logical_and.reduce([f[common].notna().all(1).to_numpy() for f in frames.values()])
    name, mask = resolve_region(adata, region, prefer=has)
    mask = mask & has
    if mask.sum() < 3:
        raise CpnnError(f"Region {name!r} has fewer than 3 spots with every composition; predict/deconvolve it.")
    types = check_names(cell_types, common, argument="cell_types", what="cell type")
    top = pd.concat([f.loc[mask, types].max() for f in frames.values()], axis=1).max(1)
    drawn = [t for t in types if top[t] >= min_share]
    faint = [t for t in types if t not in drawn]
    labels = list(labels) if labels is not None else [source_of(adata, k) or k for k in keys]
    values, titles = pd.DataFrame(index=adata.obs_names), []
    for t in drawn:
        first = frames[keys[0]].loc[mask, [t]].to_numpy(float)
        for j, k in enumerate(keys):
            values[f"{t} | {k}"] = frames[k][t].astype(float)
            r = "" if j == 0 else f", r = {columnwise_pearson(first, frames[k].loc[mask, [t]].to_numpy(float))[0]:.2f}"
            titles.append(f"{t}\n{labels[j]}{r}")
    if not drawn:
        raise CpnnError(f"Every cell type stays below min_share={min_share} in region {name!r}; lower min_share.")
    note = f"Below {min_share:.0%} in every source (not drawn): {', '.join(faint)}" if faint else None
    fig = draw_spots(
        data,
        values,
        mask,
        region=name,
        titles=titles,
        colorbar_label="proportion (shared 0-1 scale)",
        ncols=len(keys),
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        img_alpha=None,
        image_key=image_key,
        max_px=max_px,
        figsize=figsize or (4.8 * len(keys), 3.4 * len(drawn)),
        ax=None,
        table_key=table_key,
        alpha=alpha,
        suptitle=f"Cell-type composition of {name}",
        note=note,
    )
    return finish(fig, None, name="compare_proportions", show=show, save=save, return_fig=return_fig)


__all__ = ["MIN_SHARE", "OFF_SHARE", "compare_proportions", "dominant", "proportions"]
