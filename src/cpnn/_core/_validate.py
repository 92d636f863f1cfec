"""Input validation shared by every public function; each failure names the argument and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._errors import CpnnError
from ._keys import UNEXPLAINED


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int, or an error naming ``name`` when it is not a whole number of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        ok = False
    else:
        ok = bool(np.isfinite(value)) and int(value) == value and value >= minimum
    if not ok:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise CpnnError(f"{name}={value!r} must be {what} and a whole number.")
    return int(value)


def check_number(
    name: str, value: Any, *, low: float | None = None, high: float | None = None, strict: bool = False
) -> float:
    """``value`` as a float, or an error naming ``name`` when it is not finite or outside the bounds.

    ``low`` is inclusive unless ``strict``; ``high`` is exclusive.
    """
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    ok = ok and bool(np.isfinite(value))
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value < high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if strict else '>='} {low:g}")
        if high is not None:
            bounds.append(f"< {high:g}")
        raise CpnnError(f"{name}={value!r} must be a finite number{' ' if bounds else ''}{' and '.join(bounds)}.")
    return float(value)


def check_key(adata: AnnData, key: str, *, where: str = "obs", argument: str = "key") -> None:
    """Raise when ``key`` is not a column of ``adata.obs`` (or a key of another slot)."""
    container = getattr(adata, where)
    keys = list(container.columns) if where in ("obs", "var") else list(container.keys())
    if key not in keys:
        raise CpnnError(f"{argument}={key!r} is not in {where}; available keys are {keys}.")


def check_counts(X: Any, *, argument: str = "X", integer: bool = True) -> None:
    """Raise when ``X`` holds NaN/inf, negative values, or (with ``integer``) non-integer counts."""
    values = X.data if sparse.issparse(X) else np.asarray(X)
    if values.size == 0:
        return
    if not np.isfinite(values).all():
        raise CpnnError(f"{argument} contains NaN or infinite values; remove or fill them before calling cpnn.")
    if (values < 0).any():
        raise CpnnError(f"{argument} contains negative values; cpnn needs raw counts (non-negative).")
    if integer and not np.allclose(values, np.round(values)):
        raise CpnnError(
            f"{argument} holds non-integer values, but raw counts are needed; "
            "pass the raw counts (e.g. layer='counts' or adata.raw) instead of normalised data."
        )


def check_genes(found: Sequence[str], wanted: Sequence[str], *, argument: str) -> list[str]:
    """Return the genes of ``wanted`` absent from ``found``, raising when none is present."""
    present = pd.Index(found)
    missing = [g for g in wanted if g not in present]
    if len(missing) == len(wanted):
        raise CpnnError(
            f"None of the {len(wanted)} genes of {argument} is present (e.g. {list(wanted)[:5]}); "
            f"the data's genes look like {list(found)[:5]}. Check the gene naming (symbols vs Ensembl IDs)."
        )
    return missing


def gene_names(adata: AnnData, gene_symbols: str | None) -> pd.Index:
    """Names that match the table's genes with outside lists.

    ``var_names``, or ``var[gene_symbols]`` (e.g. symbols beside Ensembl IDs, as in scanpy).
    """
    if gene_symbols is None:
        return adata.var_names
    check_key(adata, gene_symbols, where="var", argument="gene_symbols")
    col = adata.var[gene_symbols]
    if col.isna().any():
        raise CpnnError(f"var[{gene_symbols!r}] (gene_symbols) has {int(col.isna().sum())} missing names; fill them.")
    return pd.Index(col.astype(str).to_numpy())


def _check_unique(names: pd.Index, axis: str, consequence: str) -> None:
    """Raise when ``names`` (the table's ``obs_names`` or ``var_names``) repeat, naming a few."""
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()
        raise CpnnError(
            f"The table's {axis}_names have {len(dup)} duplicates (e.g. {list(dup[:3])}){consequence}; "
            f"call adata.{axis}_names_make_unique() first."
        )


def check_unique_obs(adata: AnnData) -> None:
    """Raise when spots share a name: selections, proportions and predictions are keyed by obs_names."""
    _check_unique(adata.obs_names, "obs", ", so spots cannot be told apart")


def check_unique_var(adata: AnnData) -> None:
    """Raise when genes share a name: panels, prototypes and predictions are keyed by var_names."""
    _check_unique(adata.var_names, "var", "")


def check_obs_mask(adata: AnnData, selection: Any, *, argument: str) -> np.ndarray:
    """Turn a spot selection into a boolean mask over ``adata.obs``.

    ``selection`` is ``None`` (all), a boolean mask, a ``(column, value(s))`` tuple, region names
    (values of the table's region column) or obs names.
    """
    n = adata.n_obs
    check_unique_obs(adata)
    if selection is None:
        return np.ones(n, bool)
    if isinstance(selection, tuple) and len(selection) == 2 and isinstance(selection[0], str):
        col, values = selection
        check_key(adata, col, argument=f"{argument}[0]")
        values = [values] if np.isscalar(values) else list(values)
        mask = adata.obs[col].isin(values).to_numpy()
    else:
        if isinstance(selection, pd.Series) and selection.dtype == bool:
            missing = adata.obs_names.difference(selection.index)
            if len(missing):
                raise CpnnError(
                    f"{argument} is a boolean Series missing {len(missing)} spots (e.g. {list(missing[:3])}); "
                    "index it by the table's obs_names."
                )
            selection = selection.reindex(adata.obs_names)
        arr = np.asarray(selection)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise CpnnError(f"{argument} is a boolean mask of shape {arr.shape}; it must have shape ({n},).")
            mask = arr.copy()
        else:
            values = [selection] if isinstance(selection, str) else list(selection)
            mask = np.zeros(n, bool)
            matched = False
            for col in region_columns(adata):
                hit = adata.obs[col].astype(str).isin(values).to_numpy()
                if hit.any():
                    mask |= hit
                    matched = True
            hit = adata.obs_names.isin(values)
            if hit.any():
                mask |= hit
                matched = True
            if not matched:
                hint = ""
                if isinstance(selection, str) and any(sep in selection for sep in ", ;"):
                    hint = f" It looks like several names in one string: pass a list, e.g. {selection.replace(',', ' ').split()}."
                raise CpnnError(
                    f"{argument}={values[:5]} matches no region, section or spot name; "
                    f"use a boolean mask, a (column, value) tuple, or names from {region_columns(adata)}.{hint}"
                )
    if not mask.any():
        raise CpnnError(f"{argument} selects no spot; the selection is empty.")
    return mask


def selection_positions(mask: np.ndarray) -> np.ndarray:
    """For each spot, its position among the ``mask`` spots (``-1`` for spots outside the selection)."""
    where = np.full(len(mask), -1)
    where[mask] = np.arange(int(np.sum(mask)))
    return where


def region_columns(adata: AnnData) -> list[str]:
    cols = []
    attrs = adata.uns.get("spatialdata_attrs", {})
    if isinstance(attrs, dict) and attrs.get("region_key") in adata.obs:
        cols.append(attrs["region_key"])
    for c in ("section", "sample", "library_id", "image"):
        if c in adata.obs and c not in cols:
            cols.append(c)
    return cols


def check_unexplained(value: Any) -> None:
    """Refuse an ``unexplained=`` setting other than ``None``, ``"flat"`` or ``"learned"``."""
    if value not in (None, "flat", "learned"):
        raise CpnnError(f"unexplained={value!r}; use one of [None, 'flat', 'learned'].")


def composition_columns(types: Sequence[str], unexplained: str | None, *, where: str = "the prototypes") -> list[str]:
    """The columns of a composition over ``types``: the types, then ``"unexplained"`` when the component is asked for.

    A reference type of that name is refused (``where`` names the prototypes in the message).
    """
    if not unexplained:
        return list(types)
    if UNEXPLAINED in types:
        raise CpnnError(
            f"{where} has a cell type named {UNEXPLAINED!r}, the name of the unexplained component; rename that type "
            "in the reference, or drop unexplained=."
        )
    return [*types, UNEXPLAINED]
