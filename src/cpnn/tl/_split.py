"""cp.tl.split: train / validation / test assignments that keep patients (or sections) apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core import check_key, get_table
from .._errors import CpnnError
from ..data import Collection, is_collection

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

__all__ = ["split"]

_ROLES = ["train", "validation", "test"]


def _groups(adata, column: str, argument: str) -> pd.Series:
    check_key(adata, column, argument=argument)
    values = adata.obs[column]
    if values.isna().any():
        raise CpnnError(f"obs[{column!r}] ({argument}) has {int(values.isna().sum())} missing values; fill them first.")
    return values.astype(str)


def _ordered(values: pd.Series, column: pd.Series) -> list[str]:
    """Group names in the column's category order (else order of appearance)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [str(c) for c in column.cat.categories if str(c) in set(values)]
    return list(dict.fromkeys(values))


def _spatial_holdout(adata, rows: np.ndarray, fraction: float) -> np.ndarray:
    """The ``fraction`` of ``rows`` lying lowest on the slide: one contiguous block, not scattered spots."""
    if "array_row" in adata.obs:
        y = adata.obs["array_row"].to_numpy(float)[rows]
    elif "spatial" in adata.obsm:
        y = np.asarray(adata.obsm["spatial"], float)[rows, 1]
    else:
        raise CpnnError(
            "validation='auto' needs a second group to validate on, or spot positions (obs['array_row'] or "
            "obsm['spatial']) to hold out a block; pass validation=None or name the validation groups."
        )
    n = max(1, round(fraction * len(rows)))
    return rows[np.argsort(-y, kind="stable")[:n]]


def _samples_table(coll: Collection, by: str, patient_key: str) -> AnnData:
    """One row per sample of a collection: its name and the ``by`` / patient value its table holds throughout."""
    rows = {}
    for name in coll.names:
        obs = coll.table(coll.open(name)).obs
        row = {"sample": name}
        for key in {by, patient_key} - {"sample"}:
            if key not in obs:
                if key == by:
                    raise CpnnError(
                        f"by={by!r}: sample {name!r} has no obs[{by!r}]; use by='sample' or add the column."
                    )
                continue
            values = obs[key].astype(str).unique()
            if len(values) != 1:
                raise CpnnError(f"Sample {name!r} holds several {key!r} values {list(values[:3])}; split by sample.")
            row[key] = values[0]
        rows[name] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    return AnnData(obs=frame)


def _protocol(by: str, same_patient: bool) -> str:
    name = f"leave-one-{by}-out"
    if by == "patient":
        name = "LOPO (leave-one-patient-out)"
    elif by == "section":
        name = "LOSO (leave-one-section-out)"
    return name + (", same patient in train" if same_patient else "")


def split(
    data: AnnData | SpatialData,
    *,
    by: str = "patient",
    test: str | Sequence[str] | None = None,
    validation: str | Sequence[str] | None = "auto",
    validation_by: str | None = None,
    validation_fraction: float = 0.2,
    patient_key: str = "patient",
    table_key: str = "table",
) -> list[pd.Series]:
    """Train / validation / test assignments of the spots, grouped so that no group is on both sides.

    Parameters
    ----------
    data
        SpatialData or AnnData; or a collection (``{sample: SpatialData or zarr path}``, a list of
        paths): then the folds assign whole samples (``by="sample"``, or a column each sample's
        table holds one value of, such as ``"patient"``) and are indexed by sample name.
    by
        ``obs`` column whose groups are held out (``"patient"``, ``"section"``, ``"slide"``...).
    test
        The held-out group(s) of a single fold. Default: one fold per group (leave one out).
    validation
        ``"auto"``: in each fold, the last group of ``validation_by`` (category order) among the
        training spots, or, when the training spots form a single such group, a contiguous block
        of ``validation_fraction`` of them (the rows lowest on the slide). A name or list of names
        of ``validation_by`` groups, or ``None`` for no validation set. Validation spots are never
        test spots, so early stopping never sees the held-out group.
    validation_by
        Column of the validation groups (default ``"section"`` when present, else ``by``).
    validation_fraction
        Share of training spots held out when no second group exists.
    patient_key
        Column naming the patient; when the same patient is on both sides of a fold, the
        protocol label says so.
    table_key
        Key of the table.

    Returns
    -------
    One categorical :class:`pandas.Series` per fold, indexed by ``obs_names``, with values
    ``"train"``, ``"validation"`` and ``"test"``; its ``name`` is the fold (``"section=B4"``) and
    ``attrs`` hold ``protocol``, ``test`` and ``validation`` (group names). Pass
    ``fold == "train"`` and ``fold == "validation"`` to :func:`cpnn.tl.fit`.

    Examples
    --------
    >>> for fold in cp.tl.split(sdata, by="patient"):  # doctest: +SKIP
    ...     model = cp.tl.fit(sdata, train=fold == "train", validation=fold == "validation")
    """
    if is_collection(data):
        data = _samples_table(Collection(data, table_key=table_key), by, patient_key)
        validation_by = validation_by or "sample"
        table_key = "table"
    adata = get_table(data, table_key)
    if adata.n_obs == 0:
        raise CpnnError("The table has no spots; nothing to split.")
    groups = _groups(adata, by, "by")
    names = _ordered(groups, adata.obs[by])
    if len(names) < 2:
        raise CpnnError(f"obs[{by!r}] has a single group ({names}); holding it out leaves nothing to train on.")
    if test is None:
        folds = [[g] for g in names]
    else:
        wanted = [test] if isinstance(test, str) else [str(t) for t in test]
        unknown = [t for t in wanted if t not in names]
        if unknown:
            raise CpnnError(f"test={unknown} is not a group of obs[{by!r}]; valid groups: {names}.")
        if len(wanted) == len(names):
            raise CpnnError(f"test={wanted} holds out every group of obs[{by!r}]; nothing is left to train on.")
        folds = [wanted]
    if not 0 < validation_fraction < 1:
        raise CpnnError(f"validation_fraction={validation_fraction} must lie between 0 and 1.")
    vby = validation_by or ("section" if "section" in adata.obs else by)
    vgroups = _groups(adata, vby, "validation_by")
    patients = _groups(adata, patient_key, "patient_key") if patient_key in adata.obs else None

    out = []
    for held in folds:
        role = np.full(adata.n_obs, "train", dtype=object)
        is_test = groups.isin(held).to_numpy()
        role[is_test] = "test"
        train_rows = np.flatnonzero(~is_test)
        val_names: list[str] = []
        if validation is not None:
            candidates = _ordered(vgroups.iloc[train_rows], adata.obs[vby])
            if isinstance(validation, str) and validation == "auto":
                if len(candidates) > 1:
                    val_names = [candidates[-1]]
                    role[train_rows[vgroups.iloc[train_rows].isin(val_names).to_numpy()]] = "validation"
                else:
                    role[_spatial_holdout(adata, train_rows, validation_fraction)] = "validation"
                    val_names = [f"{candidates[0]} (spatial block, {validation_fraction:.0%})"]
            else:
                val_names = [validation] if isinstance(validation, str) else [str(v) for v in validation]
                bad = [v for v in val_names if v not in candidates]
                if bad:
                    raise CpnnError(
                        f"validation={bad} is not a {vby!r} group of this fold's training spots; "
                        f"choose from {candidates}."
                    )
                role[train_rows[vgroups.iloc[train_rows].isin(val_names).to_numpy()]] = "validation"
            if not (role == "train").any():
                raise CpnnError(f"In fold {by}={held}, validation takes every training spot; choose fewer groups.")
        same_patient = False
        if patients is not None:
            same_patient = bool(set(patients[is_test]) & set(patients[~is_test]))
        fold = pd.Series(
            pd.Categorical(role, categories=_ROLES), index=adata.obs_names.copy(), name=f"{by}={'+'.join(held)}"
        )
        fold.attrs = {"protocol": _protocol(by, same_patient), "test": list(held), "validation": val_names, "by": by}
        out.append(fold)
    return out
