"""The composition targets of a fit and the per-gene scaling that comes with them (the paper's recipe).

The authors deconvolve the training samples' own counts with the same reference before training,
supervise the image-derived composition with those proportions and start the per-gene correction
``alpha`` from the per-gene technical scaling fitted with them. :func:`composition_targets` does the
first for ``targets="deconvolve"``, :func:`gene_scaling` reads the second back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from anndata import AnnData
from scanpy import logging as logg

from .._core import panel_counts, panel_genes, panel_prototypes, uns_cpnn
from .._errors import CpnnError
from ..pp import deconvolve
from ._config import FitConfig
from ._inputs import split_masks


def targets_key(key_added: str) -> str:
    """``obsm`` key of the targets a fit deconvolves itself."""
    return f"{key_added}_deconvolution"


def _covers_exactly(adata: AnnData, key: str, train: np.ndarray, prototypes_key: str, types: list[str]) -> bool:
    """Whether ``obsm[key]`` is a deconvolution of exactly the training rows with the same prototype set."""
    frame = adata.obsm.get(key)
    record = uns_cpnn(adata).get("deconvolution", {}).get(key)
    if frame is None or not isinstance(record, dict) or str(record.get("prototypes_key")) != prototypes_key:
        return False
    if [str(t) for t in record.get("cell_types", [])] != [str(t) for t in types]:
        return False  # prototypes rebuilt with other cell types since
    finite = np.isfinite(np.asarray(frame, dtype=float)).all(1)
    return bool(np.array_equal(finite, train))


def composition_targets(
    adata: AnnData | None, config: FitConfig, train: Any, validation: Any, key_added: str
) -> FitConfig:
    """The configuration with ``composition_key`` set to a deconvolution of the training spots, when the recipe asks.

    Applies when the head has a composition, ``comp_reg > 0``, ``targets="deconvolve"`` and no
    ``composition_key`` was given. The deconvolution (NB, the fit's seed) of the training rows only
    is written to ``obsm[f"{key_added}_deconvolution"]`` and reused by a later fit on the same rows.
    A collection of samples gets no automatic targets (said in a warning).
    """
    head = config.head_class
    if not head.composition or config.targets != "deconvolve" or not config.comp_reg or config.composition_key:
        return config
    if adata is None:
        logg.warning(
            "targets='deconvolve': a collection of samples is not deconvolved automatically, so this fit has no "
            "composition loss. Run cp.pp.deconvolve on each sample's training spots and pass composition_key=, "
            "or pass comp_reg=0 to silence this."
        )
        return config
    # the panel and prototypes are checked first, with the messages read_split gives
    genes = panel_genes(adata)
    _, types = panel_prototypes(adata, genes, config.prototypes_key)
    train_mask, _ = split_masks(adata, train, validation)
    # the counts are checked with read_split's messages (whole numbers for the NB loss); deconvolving
    # needs whole numbers whatever the loss
    block = panel_counts(adata, genes, train_mask, config.layer, argument="training", integer=config.loss == "nb")
    if block.size and not np.allclose(block, np.round(block)):
        raise CpnnError(
            "the counts of the training spots are not whole numbers, but targets='deconvolve' deconvolves raw "
            "counts for the composition loss: pass the raw counts (layer= naming them), your own targets "
            "(composition_key=), or comp_reg=0 for no composition loss."
        )
    key = targets_key(key_added)
    if _covers_exactly(adata, key, train_mask, config.prototypes_key, list(types)):
        logg.info(f"    composition targets: obsm[{key!r}] (a deconvolution of these training spots)")
    else:
        logg.info(
            f"    composition targets: deconvolving the {int(train_mask.sum())} training spots (NB) into obsm[{key!r}]; "
            "validation and test spots are never deconvolved. Pass composition_key= for your own targets, "
            "or comp_reg=0 for none."
        )
        for stale in (key, f"{key}_fine"):  # this fit's own key: an earlier fit's other spots must not linger
            adata.obsm.pop(stale, None)
        deconvolve(
            adata,
            regions=train_mask,
            key_added=key,
            prototypes_key=config.prototypes_key,
            layer=config.layer,
            seed=config.seed,
        )
    return replace(config, composition_key=key)


def gene_scaling(adata: AnnData | None, config: FitConfig, genes: list[str]) -> np.ndarray | None:
    """Per panel gene, the technical scaling fitted with the composition targets (1 where none), or ``None``.

    ``None`` when ``alpha_init`` is not ``"scaling"``, the head has no correction, or the targets
    carry no scaling (e.g. targets from another method); the last is logged.
    """
    if config.alpha_init != "scaling" or not config.head_class.composition or not config.correction:
        return None
    record = (
        None
        if adata is None or not config.composition_key
        else (uns_cpnn(adata).get("deconvolution", {}).get(config.composition_key))
    )
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
