"""cp.pp.deconvolve: cell-type proportions of each spot (or bulk sample) from its counts and the prototypes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from anndata import AnnData
from scanpy import logging as logg
from scipy.optimize import nnls
from tqdm.auto import tqdm

from .._core import (
    PROTOTYPES,
    check_counts,
    check_int,
    check_number,
    check_obs_mask,
    dense_rows,
    get_table,
    in_reference_column,
    layer_matrix,
    prototype_groups,
    prototype_set,
    return_copy,
    to_uns,
    uns_cpnn,
    write_composition,
)
from .._errors import CpnnError
from .._settings import settings
from ._genes import normalized_mean

#: ``obsm`` key of the deconvolved proportions unless told otherwise.
DECONVOLUTION = "cpnn_deconvolution"


def _prototypes(adata: AnnData, key: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Prototypes (genes x K), cell types and the mask of genes that have one."""
    if key not in adata.varm:
        raise CpnnError(f"No prototypes in varm[{key!r}]: call cp.pp.build_prototypes(data, reference, ...) first.")
    entry = prototype_set(adata, key)
    types = [str(t) for t in (entry.get("cell_types") or uns_cpnn(adata).get("cell_types", []))]
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


def informative_genes(counts: np.ndarray, P: np.ndarray, n_genes: int) -> np.ndarray:
    """Columns to deconvolve on: half the most expressed, half the most cell-type-specific (detected) genes.

    Specific genes keep types with similar overall profiles (T cells, B cells, plasma cells)
    apart; highly expressed genes carry most of the counts.
    """
    detected = (counts > 0).mean(0) >= 0.01
    order = [int(g) for g in np.argsort(-normalized_mean(counts), kind="stable") if detected[g]]
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


def _nb(
    counts: np.ndarray, P: np.ndarray, start: np.ndarray, *, n_iter: int, lr: float, device: str, seed: int
) -> tuple[np.ndarray, dict]:
    """Maximum likelihood of the counts under NB(library x normalise(s_g x (w . P)), theta_g), w on the simplex.

    ``s_g`` is a per-gene technical scaling shared by all rows (centred on the log scale), ``theta_g``
    the per-gene inverse dispersion: an observation model in the spirit of cell2location and RCTD
    (maximum likelihood, not their Bayesian models). Terms that
    vanish for zero counts are evaluated on the non-zero entries only.
    """
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    x = torch.as_tensor(counts, dtype=torch.float32, device=dev)
    lib = x.sum(1, keepdim=True)
    nz = torch.nonzero(x, as_tuple=True)
    x_nz = x[nz]
    A = torch.as_tensor(P / P.sum(0, keepdims=True), dtype=torch.float32, device=dev).T  # K x G
    logits = torch.log(torch.as_tensor(start, dtype=torch.float32) + 1e-3).to(dev)
    logits = (logits + 1e-4 * torch.randn(logits.shape, generator=gen).to(dev)).requires_grad_(True)
    log_s = torch.zeros(A.shape[1], device=dev, requires_grad=True)
    log_theta = torch.full((A.shape[1],), 2.0, device=dev, requires_grad=True)
    opt = torch.optim.Adam([logits, log_s, log_theta], lr=lr)
    n = x.shape[0]
    history = []
    for _ in tqdm(range(n_iter), desc="deconvolution", disable=not settings.progress_bar):
        opt.zero_grad(set_to_none=True)
        w = torch.softmax(logits, dim=1)
        e = (w @ A) * torch.exp(log_s - log_s.mean())
        mu = lib * e / e.sum(1, keepdim=True)
        theta = torch.exp(log_theta)
        log_theta_mu = torch.log(theta + mu)
        # NB log-likelihood without the constant lgamma(x + 1): the zero-count part is dense, the rest sparse
        dense = (theta * (log_theta - log_theta_mu)).sum()
        th_nz = theta[nz[1]]
        sparse = (
            x_nz * (torch.log(mu[nz] + 1e-8) - log_theta_mu[nz]) + torch.lgamma(x_nz + th_nz) - torch.lgamma(th_nz)
        ).sum()
        nll = -(dense + sparse) / n
        loss = nll + 0.5 * (log_s**2).mean()  # a weak prior keeps the gene scaling near 1
        loss.backward()
        opt.step()
        history.append(float(nll.detach()))
    w = torch.softmax(logits.detach(), dim=1).cpu().numpy().astype(np.float64)
    scaling = torch.exp(log_s.detach() - log_s.detach().mean()).cpu().numpy().astype(np.float64)
    return w, {
        "final_nll": history[-1],
        "first_nll": history[0],
        "gene_scaling_sd": float(log_s.detach().std()),
        "gene_scaling": scaling,
    }


def deconvolve(
    data: AnnData | Any,
    *,
    method: Literal["nb", "nnls"] = "nb",
    prototypes_key: str = PROTOTYPES,
    key_added: str = DECONVOLUTION,
    regions: Any = None,
    genes: Sequence[str] | None = None,
    n_genes: int = 2000,
    layer: str | None = None,
    n_iter: int = 200,
    lr: float = 0.1,
    device: str = "auto",
    seed: int = 0,
    table_key: str = "table",
    copy: bool = False,
) -> AnnData | Any | None:
    """Estimate each spot's (or bulk sample's) cell-type proportions from its counts and the prototypes.

    The targets of the paper's composition loss: deconvolve the *training* spots (``regions=``),
    then pass ``composition_key=key_added`` to :func:`cpnn.tl.fit`, which uses the targets of its
    training spots only.

    Parameters
    ----------
    data
        AnnData (spots or bulk samples x genes, raw counts) or SpatialData, with prototypes from
        :func:`cpnn.pp.build_prototypes`.
    method
        ``"nb"``: maximum likelihood of the raw counts under a negative binomial whose mean is the
        library size times the normalised ``s_g * (w . prototypes)``, with a per-gene technical
        scaling ``s_g`` and inverse dispersion shared across spots (an observation model in the
        spirit of cell2location's and RCTD's, but not cell2location's spatial model, which the
        authors run: no priors on cell abundance, maximum likelihood instead of variational
        inference), fitted in torch (CUDA when present) from the ``"nnls"`` solution. ``"nnls"``:
        non-negative least squares of each spot's gene proportions on the types' (fast baseline).
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
        Adam iterations of ``method="nb"``.
    lr
        Adam learning rate of ``method="nb"``.
    device
        Torch device of ``method="nb"``: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed
        Seed of the small jitter added to the ``"nnls"`` start of ``method="nb"``.
    table_key
        Key of the table.
    copy
        Return a copy instead of writing into ``data``.

    Returns
    -------
    ``None``, or a copy with ``copy=True``. Writes ``obsm[key_added]`` (DataFrame, columns = cell types,
    rows sum to 1, NaN for spots not deconvolved or without counts in the genes; with grouped
    prototypes the group sums, the fine ones in ``obsm[key_added + "_fine"]``) and
    ``uns["cpnn"]["deconvolution"][key_added]`` (method, genes, spots, fit summary; for ``"nb"`` the
    fitted per-gene technical scaling ``gene_scaling``, geometric mean 1, aligned with ``genes``,
    which :func:`cpnn.tl.fit` can start its per-gene correction from: ``alpha_init="scaling"``).
    """
    start = logg.info(f"deconvolving with {method!r}")
    if method not in ("nb", "nnls"):
        raise CpnnError(f"method={method!r}; use 'nb' (negative binomial) or 'nnls'.")
    check_int("n_genes", n_genes, minimum=2)
    check_int("n_iter", n_iter)
    check_number("lr", lr, low=0.0, strict=True)
    adata = get_table(data, table_key)
    P_all, types, has = _prototypes(adata, prototypes_key)
    mask = check_obs_mask(adata, regions, argument="regions")
    X = layer_matrix(adata, layer)
    if genes is not None:
        genes = [str(g) for g in genes]
        unknown = [g for g in genes if g not in adata.var_names]
        if unknown:
            raise CpnnError(f"genes: {len(unknown)} are not in the table, e.g. {unknown[:5]}.")
        idx = adata.var_names.get_indexer(genes)
        lacking = [g for g, i in zip(genes, idx, strict=True) if not has[i]]
        if lacking:
            raise CpnnError(f"genes: {len(lacking)} have no prototype in varm[{prototypes_key!r}], e.g. {lacking[:5]}.")
    candidates = np.flatnonzero(has)
    rows = np.flatnonzero(mask)
    block = dense_rows(X, rows, candidates if genes is None else adata.var_names.get_indexer(genes))
    check_counts(
        block, argument=f"the counts ({'X' if layer is None else 'layer ' + repr(layer)})", integer=method == "nb"
    )
    if genes is None:
        pick = informative_genes(block, P_all[candidates], min(n_genes, len(candidates)))
        idx, block = candidates[pick], block[:, pick]
    P = P_all[idx]
    lib = block.sum(1)
    empty = lib <= 0
    if empty.all():
        raise CpnnError("No selected spot has counts in the deconvolution genes; check regions= and the counts.")
    if empty.any():
        logg.warning(f"{int(empty.sum())} spots have no counts in the {len(idx)} genes and are left out (NaN)")
    t0 = time.perf_counter()
    w = _nnls(block[~empty], P)
    summary: dict = {}
    if method == "nb":
        w, summary = _nb(block[~empty], P, w, n_iter=n_iter, lr=lr, device=settings.resolve_device(device), seed=seed)
    seconds = time.perf_counter() - t0
    data = return_copy(data, copy)
    adata = get_table(data, table_key)
    written = write_composition(
        adata, rows[~empty], w.astype(np.float32), types, prototype_groups(adata, prototypes_key), key_added
    )
    if empty.any():
        for key in written:
            frame = adata.obsm[key]
            frame.iloc[rows[empty]] = np.nan
    uns_cpnn(adata).setdefault("deconvolution", {})[key_added] = to_uns(
        {
            "method": method,
            "prototypes_key": prototypes_key,
            "cell_types": types,
            "n_genes": len(idx),
            "genes": list(adata.var_names[idx]),
            "n_spots": int((~empty).sum()),
            "n_spots_without_counts": int(empty.sum()),
            "seconds": float(seconds),
            **summary,
        }
    )
    logg.info(
        f"    {int((~empty).sum())} spots, {len(types)} cell types, {len(idx)} genes",
        time=start,
        deep=f"added\n    {', '.join(repr(k) for k in written)} (adata.obsm)\n    'deconvolution' (adata.uns['cpnn'])",
    )
    return data if copy else None
