"""cp.pp.deconvolve: cell-type proportions of each spot (or bulk sample) from its counts and the prototypes."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse
from scipy.optimize import nnls
from tqdm.auto import tqdm

from .._core import (
    PROTOTYPES,
    UNEXPLAINED,
    Rows,
    check_counts,
    check_int,
    check_number,
    check_obs_mask,
    check_unexplained,
    check_unique_var,
    composition_columns,
    dense_rows,
    get_table,
    in_reference_column,
    layer_matrix,
    prototype_groups,
    prototype_set,
    return_copy,
    to_uns,
    uns_cpnn,
    uns_list,
    uses_cpu_threads,
    write_composition,
)
from .._errors import CpnnError
from .._settings import settings
from ..models._nb_mixture import fit_shared, solve_compositions

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

#: ``obsm`` key of the deconvolved proportions unless told otherwise.
DECONVOLUTION = "cpnn_deconvolution"


def _prototypes(adata: AnnData, key: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Prototypes (genes x K), cell types and the mask of genes that have one."""
    if key not in adata.varm:
        raise CpnnError(f"No prototypes in varm[{key!r}]: call cp.pp.build_prototypes(data, reference, ...) first.")
    entry = prototype_set(adata, key)
    types = uns_list(entry.get("cell_types")) or uns_list(uns_cpnn(adata).get("cell_types"))
    P = np.asarray(adata.varm[key], dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != len(types) or len(types) < 2:
        raise CpnnError(
            f"varm[{key!r}] must hold at least two cell types named in uns['cpnn']; rebuild it with "
            "cp.pp.build_prototypes."
        )
    column = in_reference_column(key)
    has = adata.var[column].to_numpy(bool) if column in adata.var else P.any(1)
    if not np.isfinite(P[has]).all() or (P[has] < 0).any():
        raise CpnnError(f"varm[{key!r}] holds NaN, infinite or negative values; rebuild the prototypes.")
    return P, types, has


def composition_units(adata: AnnData, key: str) -> str:
    """What a weight on the prototypes of ``varm[key]`` counts: ``"cells"``, or the prototypes' own scale."""
    units = prototype_set(adata, key).get("units")
    return "cells" if units == "cells" else "shares of counts"


def _check_same_key(
    adata: AnnData,
    key: str,
    rows: np.ndarray,
    method: str,
    prototypes_key: str,
    types: list[str],
    scaling_prior: float = 0.0,
    layer: str | None = None,
    unexplained: str | None = None,
    units: str = "cells",
) -> int:
    """Refuse to add spots to ``obsm[key]`` deconvolved earlier with other settings (method, prototypes, units...).

    ``units``: :func:`composition_units` of the prototypes. Returns the number of earlier calls into ``key`` whose spots stay (0 when none do).
    """
    old = adata.obsm.get(key)
    if not isinstance(old, pd.DataFrame):
        return 0
    kept = old.notna().all(1).to_numpy()
    kept[rows] = False  # this call redoes these
    if not kept.any():
        return 0
    record = uns_cpnn(adata).get("deconvolution", {}).get(key)
    record = record if isinstance(record, dict) else {}
    earlier = (
        record.get("method"),
        record.get("prototypes_key"),
        uns_list(record.get("cell_types")),
        float(record.get("scaling_prior", 0.0) or 0.0),
        str(record.get("layer", "") or ""),
        str(record.get("units", "shares of counts")),  # written before compositions in cells: shares of counts
        record.get("unexplained"),
    )
    if earlier != (method, prototypes_key, types, float(scaling_prior), str(layer or ""), units, unexplained):
        raise CpnnError(
            f"obsm[{key!r}] holds {int(kept.sum())} spots deconvolved earlier "
            f"(method={earlier[0]!r}, prototypes_key={earlier[1]!r}, cell types {earlier[2][:4]}..., "
            f"scaling_prior={earlier[3]:g}, layer={earlier[4] or None!r}, in {earlier[5]}, unexplained={earlier[6]!r}), "
            f"but this call uses method={method!r} with the {len(types)} cell types of varm[{prototypes_key!r}], "
            f"scaling_prior={float(scaling_prior):g}, layer={layer!r}, in {units}, unexplained={unexplained!r}. One key "
            "holds one deconvolution's "
            "settings: pass another key_added=, or include those spots in regions= to redo them."
        )
    return int(record.get("calls", 1))


def gene_statistics(
    X: Any, rows: np.ndarray, cols: np.ndarray, *, argument: str, integer: bool, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``cols``: the share of ``rows`` with a count, and the mean count per 1e4 of the row's total.

    Reads ``chunk`` rows at a time and never densifies a sparse matrix; validates the counts as it goes.
    """
    detected = np.zeros(len(cols))
    scaled = np.zeros(len(cols))
    for start in range(0, len(rows), chunk):
        block = X[rows[start : start + chunk]][:, cols]
        check_counts(block, argument=argument, integer=integer)
        totals = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
        if sparse.issparse(block):
            detected += np.asarray((block > 0).sum(axis=0)).ravel()
            scaled += np.asarray((sparse.diags(scale) @ block).sum(axis=0)).ravel()
        else:
            block = np.asarray(block)
            detected += (block > 0).sum(0)
            scaled += (block * scale[:, None]).sum(0)
    return detected / max(len(rows), 1), scaled / max(len(rows), 1)


def informative_genes(detected: np.ndarray, mean: np.ndarray, P: np.ndarray, n_genes: int) -> np.ndarray:
    """Columns to deconvolve on: half the most expressed, half the most cell-type-specific (detected) genes.

    ``detected``: share of spots with a count; ``mean``: mean count per 1e4 (see
    :func:`gene_statistics`); ``P``: the prototypes (genes x K). Specific genes keep types with
    similar overall profiles (T cells, B cells, plasma cells) apart; highly expressed genes carry
    most of the counts.
    """
    detected = detected >= 0.01
    order = [int(g) for g in np.argsort(-mean, kind="stable") if detected[g]]
    chosen = dict.fromkeys(order[: n_genes // 2])
    share = P / np.clip(P.sum(1, keepdims=True), 1e-12, None)  # each gene's split over the types
    best = share.argmax(1)
    per_type = max(1, (n_genes - len(chosen)) // P.shape[1])
    for k in range(P.shape[1]):
        candidates = np.flatnonzero(detected & (best == k))
        score = share[candidates, k] * np.log1p(P[candidates, k])  # specific, and expressed in the type
        added = 0
        for g in candidates[np.argsort(-score, kind="stable")]:
            if added >= per_type:
                break
            if int(g) not in chosen:
                chosen[int(g)] = None
                added += 1
    return np.array(sorted(chosen), dtype=np.int64)


def _nnls(counts: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Non-negative least squares of each row's gene proportions on the types' gene proportions."""
    y = counts / counts.sum(1, keepdims=True)
    A = P / P.sum(0, keepdims=True)  # genes x K, each type a distribution over the genes
    w = np.stack([nnls(A, row)[0] for row in y])
    total = w.sum(1, keepdims=True)
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), 1.0 / P.shape[1])
    return w


@uses_cpu_threads
def deconvolve(
    data: AnnData | SpatialData,
    *,
    method: Literal["nb", "nnls"] = "nb",
    prototypes_key: str = PROTOTYPES,
    key_added: str = DECONVOLUTION,
    regions: Rows = None,
    genes: Sequence[str] | None = None,
    n_genes: int = 2000,
    layer: str | None = None,
    n_iter: int = 500,
    tol: float = 1e-6,
    shared_spots: int = 1000,
    scaling_prior: float = 0.0,
    chunk_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    unexplained: Literal["flat", "learned"] | None = None,
    count_shares: bool = False,
    table_key: str = "table",
    copy: bool = False,
    lr: float | None = None,
) -> AnnData | SpatialData | None:
    """Estimate each spot's (or bulk sample's) cell-type proportions (fractions of cells) from its counts and the prototypes.

    Proportions are **fractions of cells**, the unit of cell2location's abundances and of
    :func:`cpnn.tl.fit`'s compositions: the mixture is solved for each type's share of
    the spot's counts, and each share is divided by the counts an average cell of the type has in
    the deconvolution genes (its prototype's total there; prototypes from
    :func:`cpnn.pp.build_prototypes` are on that scale). RNA-rich types carry more counts per cell,
    so their share of counts exceeds their share of cells. With prototypes that carry no RNA content
    (normalised profiles without ``rna_content=``, or built by an earlier cpnn) the proportions are shares
    of counts, recorded as such and said in a warning.

    The targets of the paper's composition loss: deconvolve the *training* spots (``regions=``),
    then pass ``composition_key=key_added`` to :func:`cpnn.tl.fit`, which uses the targets of its
    training spots only.

    Parameters
    ----------
    data
        AnnData (spots or bulk samples x genes, raw counts) or SpatialData, with prototypes from
        :func:`cpnn.pp.build_prototypes`.
    method
        ``"nb"``: maximum likelihood of the raw counts under a negative binomial whose mean is
        ``s_g * sum_k h_k * prototype_k`` (each prototype normalised to sum 1), with a per-gene
        technical scaling ``s_g`` (cell2location's ``m_g``) and inverse dispersion shared by all
        spots, and ``h`` the spot's counts per cell type (the composition is ``h`` normalised).
        An observation model in the spirit of cell2location's and RCTD's, not cell2location's
        spatial model, which the authors run: no priors on cell abundance, maximum likelihood
        instead of variational inference. Fitted in two stages: the shared per-gene parameters on
        ``shared_spots`` random spots, then every spot's composition with them fixed, ``chunk_size``
        spots at a time (memory bounded by the chunk; CUDA when present). ``"nnls"``: non-negative
        least squares of each spot's gene proportions on the types' (fast baseline).
    prototypes_key
        ``varm`` key of the prototypes.
    key_added
        ``obsm`` key of the proportions.
    regions
        Spots to deconvolve (region/section names, a mask or a ``(column, values)`` tuple); default all.
    genes
        Genes to use (must have a prototype). Default: ``n_genes`` genes with a prototype, half the
        most expressed in these spots and half the most specific to one cell type.
    n_genes
        Genes chosen when ``genes`` is not given.
    layer
        Layer with raw counts (default ``X``).
    n_iter
        Rounds of the shared fit of ``method="nb"`` at most (each: every subsampled spot's
        composition, then the gene scaling, then the dispersion); a warning says when the fit was
        still changing at the cap.
    tol
        The shared fit of ``method="nb"`` stops when the mean negative log-likelihood per spot
        changes by less than ``tol`` (relative) between rounds. 0.3's ``1e-4`` (with a cap of 100
        rounds) stopped while the per-gene scaling and the compositions still moved: planted cells
        came back 0.07 from their fractions, 0.02 at the default; HER2ST's spots need 100 to 200
        rounds (about 25 at ``1e-4``; near ``1e-6`` the float32 likelihood's rounding decides the
        last rounds, a change of about 0.01 in the compositions).
    shared_spots
        Spots, drawn at random (``seed``), on which ``method="nb"`` fits the shared per-gene
        parameters; all spots when fewer. On HER2ST 500 to 1,000 give the agreement with
        stereoscope of a fit on all spots (docs/benchmarks.md).
    scaling_prior
        Shape ``a`` of a Gamma(a, a) prior (mean 1) on each gene's technical scaling ``s_g`` in
        ``method="nb"``'s shared fit (sd of ``log s_g`` about ``1 / sqrt(a)``; cell2location
        puts a prior of this kind on its ``m_g``). ``0``: maximum likelihood.
    chunk_size
        Spots solved at a time; default from the number of genes (~100 MiB of work arrays).
        Results do not depend on it.
    device
        Torch device of ``method="nb"``: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed
        Seed of the ``shared_spots`` draw of ``method="nb"``.
    unexplained
        Add an *unexplained* component (``method="nb"``), the column ``"unexplained"``, for
        expression no reference type explains (stereoscope's "dummy" cell type), counted in cells
        of the types' median RNA content. ``"flat"``: a profile with every gene alike (times its
        technical scaling); ``"learned"``: a free profile learned with the shared per-gene
        parameters from that flat start. On HER2ST with the one-patient CID4465 reference the
        learned profile takes 0.74 of every spot (it learns the tumour the reference lacks), the
        flat one 0.06 and raises the agreement with stereoscope (docs/benchmarks.md). The profile
        is kept in ``uns`` (``unexplained_profile``, aligned with ``genes``). ``None``: none.
    count_shares
        Also write each type's share of the spot's counts (in the deconvolution genes) to
        ``obsm[key_added + "_count_shares"]``.
    table_key
        Key of the table.
    copy
        Return a copy instead of writing into ``data``.
    lr
        Deprecated and ignored (the NB fit takes closed-form steps since 0.3); will be removed.

    Returns
    -------
    ``None``, or a copy with ``copy=True``. Writes ``obsm[key_added]`` (DataFrame of fractions of cells,
    columns = cell types, rows sum to 1, NaN for spots not deconvolved or without counts in the genes;
    with grouped prototypes the group sums, the fine ones in ``obsm[key_added + "_fine"]``) and
    ``uns["cpnn"]["deconvolution"][key_added]`` (method, ``units``, ``counts_per_cell`` of each type in
    the genes used, genes, spots, fit summary; for ``"nb"`` the
    fitted per-gene technical scaling ``gene_scaling``, geometric mean 1, and inverse dispersion
    ``theta``, aligned with ``genes``,
    which :func:`cpnn.tl.fit` can start its per-gene correction from: ``alpha_init="scaling"``).
    """
    start = logg.info(f"deconvolving with {method!r}")
    if method not in ("nb", "nnls"):
        raise CpnnError(f"method={method!r}; use 'nb' (negative binomial) or 'nnls'.")
    if lr is not None:
        warnings.warn(
            "deconvolve(lr=) is deprecated and ignored since 0.3: the NB fit no longer uses gradient steps "
            "(closed-form updates); remove the argument.",
            FutureWarning,
            stacklevel=2,
        )
    check_int("n_genes", n_genes, minimum=2)
    check_int("n_iter", n_iter)
    check_number("tol", tol, low=0.0, strict=True)
    check_int("shared_spots", shared_spots, minimum=10)
    check_number("scaling_prior", scaling_prior, low=0)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    adata = get_table(data, table_key)
    check_unique_var(adata)
    P_all, types, has = _prototypes(adata, prototypes_key)
    mask = check_obs_mask(adata, regions, argument="regions")
    if layer is not None:
        layer_matrix(adata, layer)  # an unknown layer is named before anything is computed
    check_unexplained(unexplained)
    if unexplained and method != "nb":
        raise CpnnError(
            f"unexplained={unexplained!r} needs method='nb' (the component is part of its NB fit); "
            f"method={method!r} has none. Drop unexplained= or use method='nb'."
        )
    columns = composition_columns(types, unexplained, where=f"varm[{prototypes_key!r}]")
    if scaling_prior and method != "nb":
        raise CpnnError(
            f"scaling_prior={scaling_prior:g} applies to method='nb' only (a prior on its per-gene scaling); "
            f"method={method!r} has no such scaling. Drop scaling_prior= or use method='nb'."
        )
    if genes is not None:
        genes = [str(g) for g in genes]
        unknown = [g for g in genes if g not in adata.var_names]
        if unknown:
            raise CpnnError(f"genes: {len(unknown)} are not in the table, e.g. {unknown[:5]}.")
        idx = adata.var_names.get_indexer(genes)
        lacking = [g for g, i in zip(genes, idx, strict=True) if not has[i]]
        if lacking:
            raise CpnnError(f"genes: {len(lacking)} have no prototype in varm[{prototypes_key!r}], e.g. {lacking[:5]}.")
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        raise CpnnError("regions= selects no spot; pass region names, a mask or a (column, values) tuple that matches.")
    units = composition_units(adata, prototypes_key)
    earlier_calls = _check_same_key(
        adata, key_added, rows, method, prototypes_key, columns, scaling_prior, layer, unexplained, units
    )
    result = solve(
        adata, rows, method=method, prototypes=(P_all, types, has), genes=None if genes is None else idx, n_genes=n_genes,
        layer=layer, n_iter=n_iter, tol=tol, shared_spots=shared_spots, scaling_prior=scaling_prior, chunk_size=chunk_size,
        device=device, seed=seed, unexplained=unexplained,
    )  # fmt: skip
    w, empty, idx = result.weights, result.empty, result.genes
    if units != "cells":
        made = prototype_set(adata, prototypes_key).get("units")
        fix = {
            "normalised expression": "method='mean' prototypes are log-normalised means; build them with method='nb'",
            "profile scale": "pass rna_content= (counts of an average cell of each type) with the profiles",
        }.get(made, "rebuild them with cp.pp.build_prototypes (it now records each type's RNA content)")
        logg.warning(
            f"the prototypes varm[{prototypes_key!r}] carry no RNA content per cell type, so obsm[{key_added!r}] holds "
            f"shares of counts, not fractions of cells (RNA-rich types over-weighted): {fix}."
        )
    data = return_copy(data, copy)
    adata = get_table(data, table_key)
    groups = prototype_groups(adata, prototypes_key)
    if groups and unexplained:
        groups[UNEXPLAINED] = UNEXPLAINED
    outputs = {key_added: w, **({f"{key_added}_count_shares": result.count_shares} if count_shares else {})}
    written = []
    for name, values in outputs.items():
        written += write_composition(adata, rows[~empty], values[~empty], result.types, groups, name)
    if empty.any():
        for key in written:
            frame = adata.obsm[key]
            frame.iloc[rows[empty]] = np.nan
    uns_cpnn(adata).setdefault("deconvolution", {})[key_added] = to_uns(
        {
            **result.record(adata, prototypes_key),
            "units": units,
            "layer": layer,
            "n_spots": int(adata.obsm[key_added].notna().all(1).sum()),
            "calls": earlier_calls + 1,
        }
    )
    logg.info(
        f"    {int((~empty).sum())} spots, {len(types)} cell types, {len(idx)} genes",
        time=start,
        deep=f"added\n    {', '.join(repr(k) for k in written)} (adata.obsm)\n    'deconvolution' (adata.uns['cpnn'])",
    )
    return data if copy else None


@dataclass
class Deconvolution:
    """What :func:`solve` found for ``rows``: compositions (NaN for rows without counts), genes used, fit summary.

    ``weights``: in units of the prototypes (fractions of cells for prototypes of an average cell);
    ``count_shares``: each type's share of the counts in the genes used; ``counts_per_cell``: the
    prototypes' totals in those genes, the factor between the two.
    """

    weights: np.ndarray
    count_shares: np.ndarray
    counts_per_cell: np.ndarray
    empty: np.ndarray
    genes: np.ndarray
    types: list[str]
    method: str
    summary: dict
    chunk: int
    seconds: float

    def record(self, adata: AnnData, prototypes_key: str) -> dict:
        """The ``uns["cpnn"]["deconvolution"][key]`` entry of this result (without the key's own counts)."""
        return {
            "method": self.method,
            "prototypes_key": prototypes_key,
            "cell_types": self.types,
            "counts_per_cell": dict(zip(self.types, self.counts_per_cell.astype(float).tolist(), strict=True)),
            "n_genes": len(self.genes),
            "genes": list(adata.var_names[self.genes]),
            "n_spots_this_call": int((~self.empty).sum()),
            "n_spots_without_counts": int(self.empty.sum()),
            "chunk_size": int(self.chunk),
            "seconds": float(self.seconds),
            **self.summary,
        }


def solve(
    adata: AnnData,
    rows: np.ndarray,
    *,
    method: str = "nb",
    prototypes: tuple[np.ndarray, list[str], np.ndarray],
    genes: np.ndarray | None = None,
    n_genes: int = 2000,
    layer: str | None = None,
    n_iter: int = 500,
    tol: float = 1e-6,
    shared_spots: int = 1000,
    scaling_prior: float = 0.0,
    chunk_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    unexplained: str | None = None,
) -> Deconvolution:
    """Deconvolve the table's ``rows`` (validated arguments) without writing anything into the table.

    ``prototypes``: what :func:`_prototypes` returns; ``genes``: column positions to use, else chosen.
    """
    P_all, types, has = prototypes
    X = layer_matrix(adata, layer)
    idx = genes
    argument = f"the counts ({'X' if layer is None else 'layer ' + repr(layer)})"
    candidates = np.flatnonzero(has) if genes is None else idx
    # one pass over the rows (validating the counts), never more than ~2**24 values dense at a time
    detected, mean_expr = gene_statistics(
        X, rows, candidates, argument=argument, integer=method == "nb", chunk=max(1, 2**24 // max(len(candidates), 1))
    )
    if not detected.any():
        raise CpnnError(
            f"{argument} of the {len(rows)} selected spots are zero in every gene with a prototype: there is "
            "nothing to deconvolve. Check layer= (raw counts) and regions=."
        )
    if genes is None:
        idx = candidates[informative_genes(detected, mean_expr, P_all[candidates], min(n_genes, len(candidates)))]
    P = P_all[idx]
    if not (P.sum(0) > 0).all():
        dead = [t for t, ok in zip(types, P.sum(0) > 0, strict=True) if not ok]
        raise CpnnError(
            f"The prototypes of {dead} are zero on every deconvolution gene; rebuild the prototypes "
            "(cp.pp.build_prototypes) or leave these cell types out of the reference."
        )
    A = P / P.sum(0, keepdims=True)
    chunk = chunk_size or max(256, min(16384, 2**23 // len(idx)))  # ~3 x 32 MiB of float32 work per chunk
    t0 = time.perf_counter()
    summary: dict = {}
    fit = None
    if method == "nb":
        dev = torch.device(settings.resolve_device(device))
        rng = np.random.default_rng(seed)
        sub = np.sort(rng.choice(len(rows), min(shared_spots, len(rows)), replace=False))
        block = dense_rows(X, rows[sub], idx)
        block = block[block.sum(1) > 0]
        if len(block) == 0:
            raise CpnnError("No selected spot has counts in the deconvolution genes; check regions= and the counts.")
        fit = fit_shared(
            block, A, device=dev, max_iter=n_iter, tol=tol, scaling_prior=scaling_prior, unexplained=unexplained
        )
        del block

    columns = composition_columns(types, unexplained)
    w = np.full((len(rows), len(columns)), np.nan, dtype=np.float32)
    slowest = 0
    bar = tqdm(total=len(rows), desc="deconvolution", unit="spot", disable=not settings.progress_bar)
    with bar:
        for begin in range(0, len(rows), chunk):
            part = np.arange(begin, min(begin + chunk, len(rows)))
            counts = dense_rows(X, rows[part], idx)
            ok = counts.sum(1) > 0
            if ok.any():
                if method == "nb":
                    shares, updates = solve_compositions(counts[ok], A, fit, device=dev)
                    slowest = max(slowest, updates)
                else:
                    shares = _nnls(counts[ok], P)
                w[part[ok]] = shares
            bar.update(len(part))
    empty = np.isnan(w).any(1)
    # shares of counts -> units of the prototypes: each share divided by a prototype's counts in these genes
    per_cell = P.sum(0)
    if unexplained:  # no reference cell to count it in: cells of the types' median RNA content
        per_cell = np.append(per_cell, np.median(per_cell))
    cells = w / per_cell[None, :].astype(np.float32)
    cells /= np.where(empty, 1.0, cells.sum(1))[:, None]
    if empty.all():
        raise CpnnError("No selected spot has counts in the deconvolution genes; check regions= and the counts.")
    if empty.any():
        logg.warning(f"{int(empty.sum())} spots have no counts in the {len(idx)} genes and are left out (NaN)")
    if fit is not None:
        if not fit.converged:
            logg.warning(
                f"the NB deconvolution's shared gene parameters were still changing after n_iter={n_iter} rounds "
                f"(relative change of the likelihood above tol={tol:g} per round); pass a larger n_iter for a converged fit"
            )
        summary = {
            "final_nll": fit.nll_history[-1],
            "first_nll": fit.nll_history[0],
            "n_iter": fit.n_iter,
            "converged": fit.converged,
            "shared_spots": int(min(shared_spots, len(rows))),
            "scaling_prior": float(scaling_prior),
            "tol": float(tol),
            "slowest_spot_updates": int(slowest),
            "gene_scaling_sd": float(np.log(fit.gene_scaling).std()),
            "gene_scaling": fit.gene_scaling,
            "theta": fit.theta,
            **({"unexplained": unexplained, "unexplained_profile": fit.unexplained} if unexplained else {}),
        }
    return Deconvolution(cells, w, per_cell, empty, idx, columns, method, summary, chunk, time.perf_counter() - t0)
