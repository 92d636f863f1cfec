"""What a fit trains on: the two sides of the split read from the table, then one input builder per kind.

:func:`read_split` gathers counts, library sizes, prototypes and reference compositions of the
training and validation spots (or bulk samples); :func:`build_inputs` turns them into training and
validation datasets of cached embeddings, image patches (fine-tuning) or slide bags of tiles.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from scanpy import logging as logg
from torch import nn

from .._core import (
    check_key,
    check_obs_mask,
    panel_counts,
    panel_genes,
    panel_prototypes,
    prototype_groups,
    reference_composition,
    selection_positions,
    unmarked_types,
)
from .._errors import CpnnError
from ..data import (
    BagDataset,
    SlideBag,
    SpotDataset,
    add_context,
    slide_bags,
    spot_coordinates_um,
    spot_patches,
    table_regions,
)
from ..models import Uint8Input
from ..pp._embed import spot_embeddings
from ._config import FitConfig


@dataclass
class Split:
    """Training and validation spots (or bulk samples) and what the heads learn from them."""

    train: np.ndarray
    validation: np.ndarray
    genes: list[str]
    counts_train: np.ndarray
    counts_validation: np.ndarray | None
    prototypes: np.ndarray | None = None
    cell_types: list[str] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)
    composition_train: np.ndarray | None = None
    samples: list[str] = field(default_factory=list)
    sample_codes: np.ndarray | None = None
    unmarked: list[str] = field(default_factory=list)

    @property
    def library_train(self) -> np.ndarray:
        """Panel library size of each training row."""
        return self.counts_train.sum(1)

    def digest(self) -> str:
        """SHA-256 of the data a checkpoint must match: the panel counts and the prototypes."""
        h = hashlib.sha256()
        for arr in (self.counts_train, self.counts_validation, self.prototypes, self.composition_train):
            if arr is not None:
                h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
        return h.hexdigest()


def read_split(adata: AnnData, config: FitConfig, train: Any, validation: Any) -> Split:
    """Masks, panel counts, prototypes and reference compositions of both sides, validated."""
    head_cls = config.head_class
    if config.sample_key is not None:
        check_key(adata, config.sample_key, argument="sample_key")
    genes = panel_genes(adata)
    protos, types = panel_prototypes(adata, genes, config.prototypes_key) if head_cls.composition else (None, [])
    val_mask = (
        check_obs_mask(adata, validation, argument="validation")
        if validation is not None
        else np.zeros(adata.n_obs, bool)
    )
    train_mask = check_obs_mask(adata, train, argument="train") if train is not None else ~val_mask
    if (train_mask & val_mask).any():
        raise CpnnError(f"train and validation share {int((train_mask & val_mask).sum())} spots; make them disjoint.")
    if not train_mask.any():
        raise CpnnError("The training set is empty; check train= and validation=.")
    integer = head_cls.composition and config.loss == "nb"
    counts_tr = panel_counts(adata, genes, train_mask, config.layer, argument="training", integer=integer)
    lib_tr = counts_tr.sum(1)
    if (lib_tr <= 0).any():
        keep = lib_tr > 0
        logg.warning(f"{int((~keep).sum())} training spots have no counts in the panel and are left out")
        rows = np.flatnonzero(train_mask)
        train_mask = train_mask.copy()
        train_mask[rows[~keep]] = False
        counts_tr = counts_tr[keep]
        if not train_mask.any():
            raise CpnnError("No training spot has counts in the panel.")
    counts_va = (
        panel_counts(adata, genes, val_mask, config.layer, argument="validation", integer=integer)
        if val_mask.any()
        else None
    )
    split = Split(train_mask, val_mask, genes, counts_tr, counts_va)
    if head_cls.composition:
        split.prototypes, split.cell_types = protos, types
        split.unmarked = unmarked_types(protos, types)
        if split.unmarked:
            logg.warning(
                f"cell type(s) {split.unmarked} have no gene of the panel they dominate: on this panel their prototypes "
                "look like other types', so their weights cannot be told apart. Add markers to the panel: "
                "cp.pp.select_genes(data, ..., markers=5, reference=ref, cell_type_key=...), then build the prototypes again"
            )
        split.groups = prototype_groups(adata, config.prototypes_key)
        # targets of the training spots only: validation and test spots' targets are never read
        split.composition_train = reference_composition(adata, config.composition_key, train_mask, types)
        if config.sample_key is not None:
            samples_tr = adata.obs[config.sample_key].astype(str).to_numpy()[train_mask]
            split.samples = sorted(set(samples_tr))
            split.sample_codes = np.searchsorted(split.samples, samples_tr).astype(np.int64)
    return split


@dataclass
class Inputs:
    """Datasets of one fit, the input width of the head, and the module trained in front of it."""

    train: Any
    validation: Any | None
    in_dim: int
    module: nn.Module
    encoder_config: dict
    #: whether the head's input standardisation is fitted on the training inputs
    standardise: bool = True


def _finetuned(config: dict) -> dict:
    """An encoder config that marks fine-tuned weights, so cached embeddings never mix them up."""
    return {**config, "finetuned": uuid.uuid4().hex}


def _spot_datasets(split: Split, x_tr: Any, x_va: Any) -> tuple[SpotDataset, SpotDataset | None]:
    def t(a):
        return None if a is None else torch.as_tensor(a)

    train = SpotDataset(
        x_tr,
        t(split.counts_train),
        t(split.library_train),
        t(split.composition_train),
        sample=t(split.sample_codes),
    )
    val = None
    if split.counts_validation is not None:
        val = SpotDataset(
            x_va,
            t(split.counts_validation),
            t(split.counts_validation.sum(1).clip(1.0)),
            None,  # validation losses never see reference compositions
        )
    return train, val


def model_inputs(
    data: Any,
    adata: AnnData,
    mask: np.ndarray,
    config: dict,
    encoder: Any,
    *,
    context_um: float | None,
    device: str,
    batch_size: int,
    num_workers: int,
    image_key: str | None,
    spot_diameter_um: float | None,
    key: str,
) -> np.ndarray:
    """Embeddings of the ``mask`` spots, with their neighbourhood's mean appended when ``context_um`` is set.

    The neighbourhood is every spot of the same region within ``context_um`` micrometres, whether
    or not it is selected (images only; no counts are used).
    """
    kw = {
        "device": device,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "image_key": image_key,
        "spot_diameter_um": spot_diameter_um,
        "key": key,
    }
    if not context_um:
        return spot_embeddings(data, adata, mask, config, encoder, **kw)
    _, region_key, _ = table_regions(adata)
    regions = adata.obs[region_key].astype(str)
    around = regions.isin(set(regions[mask])).to_numpy()
    z = spot_embeddings(data, adata, around, config, encoder, **kw)
    xy, label = spot_coordinates_um(data, adata, around, image_key=image_key, spot_diameter_um=spot_diameter_um)
    return add_context(z, xy, label, float(context_um))[mask[around]]


def bag_embeddings(
    bags: list[SlideBag],
    config: dict,
    encoder: Any,
    *,
    device: str,
    num_workers: int,
    image_key: str | None,
    key: str,
    batch_size: int = 64,
) -> list[np.ndarray]:
    """Tile embeddings of each bag, cached in its tiles table's ``obsm[key]`` (one pass per table)."""
    groups: dict[int, list[int]] = {}
    for i, bag in enumerate(bags):
        groups.setdefault(id(bag.table), []).append(i)
    out: list[np.ndarray | None] = [None] * len(bags)
    for members in groups.values():
        first = bags[members[0]]
        union = np.zeros(first.table.n_obs, bool)
        for i in members:
            union |= bags[i].mask
        z = spot_embeddings(
            first.sdata,
            first.table,
            union,
            config,
            encoder,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            image_key=image_key,
            spot_diameter_um=None,
            key=key,
        )
        rows = selection_positions(union)  # table row -> row of z
        for i in members:
            out[i] = z[rows[bags[i].mask]]
    return out  # type: ignore[return-value]


def _embedding_inputs(
    data, adata, config: FitConfig, split: Split, encoder, *, sources, device, num_workers, embed_batch_size
) -> Inputs:
    """Frozen encoder, spot level: cached embeddings (with spatial context when asked)."""
    both = split.train | split.validation
    z = model_inputs(
        data,
        adata,
        both,
        config.encoder_config,
        encoder,
        context_um=config.context_um,
        device=device,
        batch_size=embed_batch_size,
        num_workers=num_workers,
        image_key=config.image_key,
        spot_diameter_um=config.spot_diameter_um,
        key=config.embedding_key,
    )
    where = selection_positions(both)
    x_va = torch.as_tensor(z[where[split.validation]]) if split.validation.any() else None
    train, val = _spot_datasets(split, torch.as_tensor(z[where[split.train]]), x_va)
    return Inputs(train, val, int(z.shape[1]), nn.Identity(), config.encoder_config)


def _patch_inputs(
    data, adata, config: FitConfig, split: Split, encoder, *, sources, device, num_workers, embed_batch_size
) -> Inputs:
    """Fine-tuning: every spot's patch as uint8, the encoder trained in front of the head."""
    enc = config.encoder_config
    kw = {
        "patch_size_um": enc["patch_size_um"],
        "patch_px": enc["patch_px"],
        "image_key": config.image_key,
        "spot_diameter_um": config.spot_diameter_um,
    }
    x_tr = spot_patches(data, adata, split.train, **kw)
    x_va = spot_patches(data, adata, split.validation, **kw) if split.validation.any() else None
    train, val = _spot_datasets(split, x_tr, x_va)
    return Inputs(train, val, int(encoder.out_dim), Uint8Input(encoder), _finetuned(enc), standardise=False)


def _slide_inputs(
    data, adata, config: FitConfig, split: Split, encoder, *, sources, device, num_workers, embed_batch_size
) -> Inputs:
    """Slide level: each bulk sample's bag of tile embeddings (cached in its tiles table)."""
    bags = slide_bags(adata, sources, tiles_key=config.tiles_key, slide_key=config.slide_key)
    used = split.train | split.validation
    z_bags = bag_embeddings(
        [b for b, u in zip(bags, used, strict=True) if u],
        config.encoder_config,
        encoder,
        device=device,
        num_workers=num_workers,
        image_key=config.image_key,
        key=config.embedding_key,
        batch_size=embed_batch_size,
    )
    by_row = dict(zip(np.flatnonzero(used), z_bags, strict=True))

    def bags_of(mask, counts, comp, library, eval_batch_size=None):
        return BagDataset(
            [torch.as_tensor(by_row[i]) for i in np.flatnonzero(mask)],
            torch.as_tensor(counts),
            torch.as_tensor(library),
            None if comp is None else torch.as_tensor(comp),
            max_patches=config.max_patches,
            seed=config.seed,
            eval_batch_size=eval_batch_size,
        )

    train = bags_of(split.train, split.counts_train, split.composition_train, split.library_train)
    val = None
    if split.counts_validation is not None:
        cv = split.counts_validation
        val = bags_of(split.validation, cv, None, cv.sum(1).clip(1.0), eval_batch_size=config.batch_size)
    return Inputs(train, val, int(z_bags[0].shape[1]), nn.Identity(), config.encoder_config)


#: One builder per kind of input (:attr:`FitConfig.inputs`).
BUILDERS: dict[str, Callable[..., Inputs]] = {
    "embeddings": _embedding_inputs,
    "patches": _patch_inputs,
    "slide": _slide_inputs,
}


def build_inputs(
    data: Any,
    adata: AnnData,
    config: FitConfig,
    split: Split,
    encoder: nn.Module,
    *,
    sources: Any,
    device: str,
    num_workers: int,
    embed_batch_size: int = 64,
) -> Inputs:
    """The training and validation datasets of a fit (``sources``: the slides at slide level)."""
    return BUILDERS[config.inputs](
        data,
        adata,
        config,
        split,
        encoder,
        sources=sources,
        device=device,
        num_workers=num_workers,
        embed_batch_size=embed_batch_size,
    )
