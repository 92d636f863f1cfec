"""The composition targets of a fit and the per-gene scaling that comes with them (the paper's recipe).

The authors deconvolve the training samples' own counts with the same reference before training,
supervise the image-derived composition with those proportions and start the per-gene correction
``alpha`` from the per-gene technical scaling fitted with them. :func:`composition_targets` does the
first for ``targets="deconvolve"``, :func:`gene_scaling` reads the second back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._core import (
    in_reference_column,
    layer_matrix,
    panel_counts,
    panel_genes,
    panel_prototypes,
    to_uns,
    uns_cpnn,
)
from .._errors import CpnnError
from ..pp import deconvolve
from ._config import FitConfig
from ._inputs import split_masks


def targets_key(key_added: str) -> str:
    """``obsm`` key of the targets a fit deconvolves itself (never ``cp.pp.deconvolve``'s default key)."""
    return f"{key_added}_targets"


#: ``cp.pp.deconvolve``'s default ``shared_spots``: below it the seed draws every row, so it changes nothing.
SHARED_SPOTS = 1000

#: Who wrote a targets key: a fit only reuses or replaces a key that a fit wrote.
MADE_BY = "cp.tl.fit"


@dataclass
class Targets:
    """A fit's own composition targets, held in memory until the fit succeeds (then :meth:`commit`)."""

    key: str
    table: AnnData  # obs names only, with the targets in obsm (``key``, and ``key + "_fine"`` when grouped)
    record: dict
    reused: bool

    def commit(self, adata: AnnData) -> None:
        """Write the targets and their record into ``adata`` (after the fit succeeded)."""
        for stale in (self.key, f"{self.key}_fine"):
            adata.obsm.pop(stale, None)
        for name, frame in self.table.obsm.items():
            adata.obsm[name] = frame
        uns_cpnn(adata).setdefault("deconvolution", {})[self.key] = to_uns(self.record)


#: How the targets are made; part of their digest, so that a change of recipe recomputes them.
TARGETS_RECIPE = "fractions of cells, tol 1e-6, at most 500 rounds"


def source_digest(
    adata: AnnData, rows: np.ndarray, layer: str | None, prototypes_key: str, seed: int, unexplained: str | None = None
) -> str:
    """SHA-256 of what a fit's targets are computed from: the rows' counts in ``layer``, the prototypes, the seed.

    ``unexplained`` (the component asked of the deconvolution) enters only when set, so that the
    targets of fits without one keep their digest.
    """
    h = hashlib.sha256()
    X = layer_matrix(adata, layer)
    for start in range(0, len(rows), 4096):
        block = X[rows[start : start + 4096]]
        if sparse.issparse(block):
            block = sparse.csr_matrix(block)
            block.sort_indices()
            for part in (block.data, block.indices, block.indptr):
                h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(np.ascontiguousarray(np.asarray(block, dtype=np.float64)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(adata.varm[prototypes_key], dtype=np.float64)).tobytes())
    h.update("\x00".join(map(str, adata.var_names)).encode())
    h.update("\x00".join(map(str, adata.obs_names[rows])).encode())
    # the seed draws deconvolve's shared spots, which are every row up to SHARED_SPOTS of them
    h.update(json.dumps([str(layer), prototypes_key, int(seed) if len(rows) > SHARED_SPOTS else None]).encode())
    if unexplained:
        h.update(f"unexplained={unexplained}".encode())
    h.update(TARGETS_RECIPE.encode())  # targets of an earlier recipe (0.3: shares of counts, tol 1e-4) are redone
    return h.hexdigest()


def _deconvolve_rows(adata: AnnData, rows: np.ndarray, key: str, config: FitConfig) -> Targets:
    """Deconvolve ``rows`` (NB, the fit's seed) on a light copy of the table: nothing is written into ``adata``."""
    h, layer = config.head_options, config.data.layer
    pkey = h.prototypes_key
    light = AnnData(X=layer_matrix(adata, layer), obs=pd.DataFrame(index=adata.obs_names), var=adata.var[[]].copy())
    light.varm[pkey] = adata.varm[pkey]
    column = in_reference_column(pkey)
    if column in adata.var:
        light.var[column] = adata.var[column].to_numpy()
    light.uns["cpnn"] = {k: v for k, v in uns_cpnn(adata).items() if k in ("prototype_sets", "cell_types")}
    mask = np.zeros(adata.n_obs, bool)
    mask[rows] = True
    deconvolve(light, regions=mask, key_added=key, prototypes_key=pkey, seed=config.seed, unexplained=h.unexplained)
    record = dict(uns_cpnn(light)["deconvolution"][key])
    record.update(layer=layer, made_by=MADE_BY)
    light.obsm = {k: v for k, v in light.obsm.items() if k in (key, f"{key}_fine")}
    return Targets(key, light, record, reused=False)


def composition_targets(
    adata: AnnData | None, config: FitConfig, train: Any, validation: Any, key_added: str
) -> tuple[FitConfig, Targets | None]:
    """The configuration with ``composition_key`` set to a deconvolution of the training spots, when the recipe asks.

    Applies when the head has a composition, ``comp_reg > 0``, ``targets="deconvolve"`` and no
    ``composition_key`` was given. The training rows only are deconvolved (NB, the fit's seed), in
    memory: the returned :class:`Targets` are written to ``obsm[f"{key_added}_targets"]`` only when
    the fit succeeds. A later fit reuses them when they were computed from the same counts (a digest
    of the training rows' counts in ``layer``), prototypes (their values) and seed; otherwise they
    are computed anew. A key holding results that no fit wrote is never touched. A collection of
    samples gets no automatic targets (said in a warning).
    """
    if not config.head_class.composition:
        return config, None
    h, layer = config.head_options, config.data.layer
    if h.targets != "deconvolve" or not h.comp_reg or h.composition_key:
        return config, None
    if adata is None:
        logg.warning(
            "targets='deconvolve': a collection of samples is not deconvolved automatically, so this fit has no "
            "composition loss. Run cp.pp.deconvolve on each sample's training spots and pass "
            "head_kwargs={'composition_key': ...}, or head_kwargs={'comp_reg': 0} to silence this."
        )
        return config, None
    # the panel and prototypes are checked first, with the messages read_split gives
    genes = panel_genes(adata)
    panel_prototypes(adata, genes, h.prototypes_key)
    train_mask, _ = split_masks(adata, train, validation)
    # the counts are checked with read_split's messages (whole numbers for the NB loss); deconvolving
    # needs whole numbers whatever the loss
    block = panel_counts(adata, genes, train_mask, layer, argument="training", integer=h.loss == "nb")
    if block.size and not np.allclose(block, np.round(block)):
        raise CpnnError(
            "the counts of the training spots are not whole numbers, but targets='deconvolve' deconvolves raw "
            "counts for the composition loss: pass the raw counts (data_kwargs={'layer': ...} naming them), your own "
            "targets (head_kwargs={'composition_key': ...}), or head_kwargs={'comp_reg': 0} for no composition loss."
        )
    key = targets_key(key_added)
    rows = np.flatnonzero(train_mask)
    record = uns_cpnn(adata).get("deconvolution", {}).get(key)
    record = record if isinstance(record, dict) else {}
    if (key in adata.obsm or record) and record.get("made_by") != MADE_BY:
        raise CpnnError(
            f"obsm[{key!r}] holds a composition that cp.tl.fit did not make, and fit(key_added={key_added!r}) keeps its "
            f"own targets there. Pass head_kwargs={{'composition_key': {key!r}}} to train on it, or another key_added=."
        )
    digest = source_digest(adata, rows, layer, h.prototypes_key, config.seed, h.unexplained)
    if record.get("source_digest") == digest and key in adata.obsm:
        logg.info(f"    composition targets: obsm[{key!r}] (a deconvolution of these training spots' counts)")
        light = AnnData(obs=pd.DataFrame(index=adata.obs_names))
        for name in (key, f"{key}_fine"):
            if name in adata.obsm:
                light.obsm[name] = adata.obsm[name].copy()
        targets = Targets(key, light, dict(record), reused=True)
    else:
        logg.info(
            f"    composition targets: deconvolving the {len(rows)} training spots (NB) into obsm[{key!r}] (written "
            "when the fit succeeds); validation and test spots are never deconvolved. Pass "
            "head_kwargs={'composition_key': ...} for your own targets, or head_kwargs={'comp_reg': 0} for none."
        )
        targets = _deconvolve_rows(adata, rows, key, config)
        targets.record["source_digest"] = digest
    return config.with_options("head", composition_key=key), targets


def gene_scaling(
    adata: AnnData | None, config: FitConfig, genes: list[str], targets: Targets | None = None
) -> np.ndarray | None:
    """Per panel gene, the technical scaling fitted with the composition targets (1 where none), or ``None``.

    ``None`` when ``alpha_init`` is not ``"scaling"``, the head has no correction, or the targets
    carry no scaling (e.g. targets from another method); the last is logged.
    """
    if not config.head_class.composition:
        return None
    h = config.head_options
    if h.alpha_init != "scaling" or not h.correction:
        return None
    if targets is not None:
        record = targets.record
    elif adata is None or not h.composition_key:
        record = None
    else:
        record = uns_cpnn(adata).get("deconvolution", {}).get(h.composition_key)
    values = None if not isinstance(record, dict) else record.get("gene_scaling")
    if values is None or len(values) != len(record.get("genes", ())):
        logg.info(
            "    alpha_init='scaling': the composition targets carry no per-gene scaling (made by cp.pp.deconvolve "
            "with method='nb'); alpha starts at log 1"
        )
        return None
    fitted = dict(zip((str(g) for g in record["genes"]), np.asarray(values, dtype=np.float64), strict=True))
    out = np.array([fitted.get(g, 1.0) for g in genes], dtype=np.float64)
    logg.info(
        f"    alpha starts from the deconvolution's gene scaling ({sum(g in fitted for g in genes)} of {len(genes)} genes)"
    )
    return out
