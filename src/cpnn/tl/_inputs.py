"""What a fit trains on: the two sides of the split read from the table, then one input builder per kind.

:func:`read_split` gathers counts, library sizes, prototypes and reference compositions of the
training and validation spots (or bulk samples); :func:`build_inputs` turns them into training and
validation datasets of cached embeddings, image patches (fine-tuning) or slide bags of tiles.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scanpy import logging as logg
from torch import nn

from .._core import (
    UNEXPLAINED,
    Rows,
    check_key,
    check_obs_mask,
    composition_columns,
    dist,
    panel_counts,
    panel_genes,
    panel_prototypes,
    prototype_groups,
    reference_composition,
    selection_positions,
    unmarked_types,
)
from .._errors import CpnnError
from .._settings import settings
from ..data import (
    BagDataset,
    Collection,
    Shard,
    ShardDataset,
    SlideBag,
    SpotDataset,
    add_context,
    slide_bags,
    spot_coordinates_um,
    spot_patches,
)
from ..models import Uint8Input
from ..pp import cached_embeddings
from ._slides import open_slides

if TYPE_CHECKING:  # pragma: no cover
    from ._config import FitConfig


@dataclass
class Run:
    """What ``fit`` hands its input kind besides the configuration: the encoder, the device, the slides.

    ``table`` and ``targets`` are set by ``fit`` once the kind named its table: the AnnData the
    training counts come from (``None`` for a kind reading many), and the table holding the fit's
    own composition targets (written into ``table`` only when the fit succeeds).
    """

    encoder: nn.Module
    device: str
    slides: Any = None
    table: AnnData | None = None
    targets: AnnData | None = None


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


def split_masks(adata: AnnData, train: Any, validation: Any) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation masks of ``fit``'s ``train=``/``validation=``: disjoint, training not empty.

    Without ``train`` every spot outside the validation side trains.
    """
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
    return train_mask, val_mask


def model_prototypes(adata: AnnData, genes: list[str], config: FitConfig) -> tuple[np.ndarray | None, list[str]]:
    """The head's prototypes (K x G) and type names: the reference's, plus the unexplained component when asked.

    ``unexplained`` (head option): one more row, ``"unexplained"``, a flat profile (every panel gene alike)
    holding the median of the types' counts in the panel, so that its weight counts cells of a
    median RNA content, as :func:`cpnn.pp.deconvolve`'s component does.
    """
    if not config.head_class.composition:
        return None, []
    protos, types = panel_prototypes(adata, genes, config.head_options.prototypes_key)
    if not config.head_options.unexplained:
        return protos, types
    columns = composition_columns(
        types, config.head_options.unexplained, where=f"varm[{config.head_options.prototypes_key!r}]"
    )
    if prototype_groups(adata, config.head_options.prototypes_key):
        raise CpnnError(
            f"unexplained={config.head_options.unexplained!r} needs prototypes of the shown cell types, but "
            f"varm[{config.head_options.prototypes_key!r}] holds finer ones grouped for display (build_prototypes(groups=)); "
            "build them without groups, or drop unexplained=."
        )
    flat = np.full((1, protos.shape[1]), float(np.median(protos.sum(1))) / protos.shape[1], dtype=protos.dtype)
    return np.vstack([protos, flat]), columns


def _reference_only(protos: np.ndarray, types: list[str]) -> tuple[np.ndarray, list[str]]:
    """The rows of the reference's cell types (without the unexplained component)."""
    keep = [k for k, t in enumerate(types) if t != UNEXPLAINED]
    return protos[keep], [types[k] for k in keep]


def read_split(
    adata: AnnData, config: FitConfig, train: Rows, validation: Rows, *, targets: AnnData | None = None
) -> Split:
    """Masks, panel counts, prototypes and reference compositions of both sides, validated.

    ``targets``: a table holding the composition targets under the ``composition_key`` head option in place
    of ``adata`` (a fit's own targets, written into ``adata`` only when the fit succeeds).
    """
    head_cls, sample_key = config.head_class, config.head_option("sample_key")
    if sample_key is not None:
        check_key(adata, sample_key, argument="sample_key")
    genes = panel_genes(adata)
    protos, types = model_prototypes(adata, genes, config)
    train_mask, val_mask = split_masks(adata, train, validation)
    integer = head_cls.composition and config.head_options.loss == "nb"
    counts_tr = panel_counts(adata, genes, train_mask, config.data.layer, argument="training", integer=integer)
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
        panel_counts(adata, genes, val_mask, config.data.layer, argument="validation", integer=integer)
        if val_mask.any()
        else None
    )
    split = Split(train_mask, val_mask, genes, counts_tr, counts_va)
    if head_cls.composition:
        split.prototypes, split.cell_types = protos, types
        split.unmarked = unmarked_types(*_reference_only(protos, types))
        if split.unmarked:
            logg.warning(
                f"cell type(s) {split.unmarked} have no gene of the panel they dominate: on this panel their prototypes "
                "look like other types', so their weights cannot be told apart. Add markers to the panel: "
                "cp.pp.select_genes(data, ..., markers=5, reference=ref, cell_type_key=...), then build the prototypes again"
            )
        split.groups = prototype_groups(adata, config.head_options.prototypes_key)
        # targets of the training spots only: validation and test spots' targets are never read
        split.composition_train = reference_composition(
            adata if targets is None else targets, config.head_options.composition_key, train_mask, types
        )
        if sample_key is not None:
            samples_tr = adata.obs[sample_key].astype(str).to_numpy()[train_mask]
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


def spot_datasets(
    split: Split, x_tr: torch.Tensor | np.ndarray, x_va: torch.Tensor | np.ndarray | None
) -> tuple[SpotDataset, SpotDataset | None]:
    """Training and validation datasets of spot rows: inputs ``x_tr``/``x_va`` with the split's counts and targets."""

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
        z = cached_embeddings(
            first.sdata,
            first.table,
            config,
            encoder,
            spots=union,
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


def embedding_inputs(data: Any, config: FitConfig, split: Split, run: Run) -> Inputs:
    """Frozen encoder, spot level: cached embeddings (with spatial context when asked)."""
    both = split.train | split.validation
    d = config.data
    z = cached_embeddings(
        data,
        run.table,
        config.encoder_config,
        run.encoder,
        spots=both,
        context_um=d.context_um,
        device=run.device,
        batch_size=d.embed_batch_size,
        num_workers=d.workers,
        image_key=d.image_key,
        spot_diameter_um=d.spot_diameter_um,
        key=d.embedding_key,
    )
    where = selection_positions(both)
    x_va = torch.as_tensor(z[where[split.validation]]) if split.validation.any() else None
    train, val = spot_datasets(split, torch.as_tensor(z[where[split.train]]), x_va)
    return Inputs(train, val, int(z.shape[1]), nn.Identity(), config.encoder_config)


def patch_inputs(data: Any, config: FitConfig, split: Split, run: Run) -> Inputs:
    """Fine-tuning: every spot's patch as uint8, the encoder trained in front of the head."""
    enc = config.encoder_config
    kw = {
        "patch_size_um": enc["patch_size_um"],
        "patch_px": enc["patch_px"],
        "image_key": config.data.image_key,
        "spot_diameter_um": config.data.spot_diameter_um,
    }
    x_tr = spot_patches(data, run.table, split.train, **kw)
    x_va = spot_patches(data, run.table, split.validation, **kw) if split.validation.any() else None
    train, val = spot_datasets(split, x_tr, x_va)
    encoder = run.encoder
    return Inputs(train, val, int(encoder.out_dim), Uint8Input(encoder), _finetuned(enc), standardise=False)


def slide_inputs(data: Any, config: FitConfig, split: Split, run: Run) -> Inputs:
    """Slide level: each bulk sample's bag of tile embeddings (cached in its tiles table)."""
    adata, d = run.table, config.data
    names = [str(n) for n in adata.obs_names]
    tile_um = config.encoder_config["patch_size_um"]
    sources = open_slides(run.slides, names, tiles_key=d.tiles_key, tile_size_um=tile_um)
    bags = slide_bags(adata, sources, tiles_key=d.tiles_key, slide_key=d.slide_key)
    used = split.train | split.validation
    z_bags = bag_embeddings(
        [b for b, u in zip(bags, used, strict=True) if u],
        config.encoder_config,
        run.encoder,
        device=run.device,
        num_workers=d.workers,
        image_key=d.image_key,
        key=d.embedding_key,
        batch_size=d.embed_batch_size,
    )
    by_row = dict(zip(np.flatnonzero(used), z_bags, strict=True))

    def bags_of(mask, counts, comp, library, eval_batch_size=None):
        return BagDataset(
            [torch.as_tensor(by_row[i]) for i in np.flatnonzero(mask)],
            torch.as_tensor(counts),
            torch.as_tensor(library),
            None if comp is None else torch.as_tensor(comp),
            max_patches=d.max_patches,
            seed=config.seed,
            eval_batch_size=eval_batch_size,
        )

    train = bags_of(split.train, split.counts_train, split.composition_train, split.library_train)
    val = None
    if split.counts_validation is not None:
        cv = split.counts_validation
        val = bags_of(split.validation, cv, None, cv.sum(1).clip(1.0), eval_batch_size=config.training.batch_size)
    return Inputs(train, val, int(z_bags[0].shape[1]), nn.Identity(), config.encoder_config)


# ---- collections: many samples, streamed from disk -------------------------------------------------


@dataclass
class CollectionSplit:
    """Training and validation samples of a collection, their rows on disk, and the panel's prototypes."""

    train: np.ndarray  # over samples
    validation: np.ndarray
    names: list[str]
    genes: list[str]
    train_shards: list[Shard]
    val_shards: list[Shard]
    prototypes: np.ndarray | None = None
    cell_types: list[str] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    sample_codes: np.ndarray | None = None
    unmarked: list[str] = field(default_factory=list)
    in_dim: int = 0
    run_dir: Path | None = None

    @property
    def library_train(self) -> np.ndarray:
        """Panel library size of each training row."""
        return np.concatenate([np.asarray(s.counts).sum(1) for s in self.train_shards])

    def digest(self) -> str:
        """SHA-256 of the training and validation counts and the prototypes (read shard by shard)."""
        h = hashlib.sha256()
        for shard in [*self.train_shards, *self.val_shards]:
            h.update(shard.name.encode())
            for start in range(0, len(shard), 8192):
                h.update(np.ascontiguousarray(shard.counts[start : start + 8192], dtype=np.float32).tobytes())
        if self.prototypes is not None:
            h.update(np.ascontiguousarray(self.prototypes, dtype=np.float32).tobytes())
        return h.hexdigest()


def sample_selection(names: list[str], selection: Any, argument: str) -> np.ndarray:
    """A selection of samples (names, a name, a boolean Series by name, or a mask) as a mask over ``names``."""
    if selection is None:
        return np.zeros(len(names), bool)
    if isinstance(selection, pd.Series) and selection.dtype == bool:
        missing = [n for n in names if n not in selection.index]
        if missing:
            raise CpnnError(f"{argument} is a boolean Series without the samples {missing[:3]}; index it by sample.")
        return selection.reindex(names).to_numpy(bool)
    arr = np.asarray(selection)
    if arr.dtype == bool:
        if arr.shape != (len(names),):
            raise CpnnError(f"{argument} is a mask of shape {arr.shape}; the collection has {len(names)} samples.")
        return arr.copy()
    wanted = [selection] if isinstance(selection, str) else [str(s) for s in selection]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise CpnnError(f"{argument}={unknown[:5]} are not samples of the collection; samples are {names[:10]}.")
    return np.isin(names, wanted)


def _write_counts(path: Path, adata: AnnData, genes: list[str], rows: np.ndarray, layer: str | None) -> np.ndarray:
    """Panel counts of ``rows`` written to a float32 memory map, a block at a time."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(rows), len(genes)))
    for start in range(0, len(rows), 4096):
        block = np.zeros(adata.n_obs, bool)
        block[rows[start : start + 4096]] = True
        out[start : start + 4096] = panel_counts(adata, genes, block, layer, argument="sample")
    out.flush()
    return np.load(path, mmap_mode="r")


def read_collection(data: Any, config: FitConfig, train: Any, validation: Any, run: Run) -> CollectionSplit:
    """Each training/validation sample's embeddings (disk cache) and panel counts (run folder), one at a time."""
    d, encoder, sample_key = config.data, run.encoder, config.head_option("sample_key")
    coll = Collection(data, table_key=d.table_key)
    names = coll.names
    val = sample_selection(names, validation, "validation")
    tr = sample_selection(names, train, "train") if train is not None else ~val
    if (tr & val).any():
        raise CpnnError(
            f"train and validation share samples {[n for n, b in zip(names, tr & val, strict=True) if b][:5]}."
        )
    if not tr.any():
        raise CpnnError("The training set is empty; check train= and validation=.")
    if config.finetune:
        raise CpnnError(
            "finetune=True trains on one SpatialData's patches; pass a single SpatialData, not a collection."
        )
    reference = d.panel if d.panel is not None else coll.table(coll.open(names[0]))
    genes = panel_genes(reference)
    head_cls = config.head_class
    protos, types = model_prototypes(reference, genes, config)
    used = [n for n, u in zip(names, tr | val, strict=True) if u]
    enc = config.encoder_config
    kw = {"device": run.device, "batch_size": d.embed_batch_size, "num_workers": d.workers}
    # embeddings: each process computes its share of the samples once; the others read them from disk
    for i, name in enumerate(used):
        if i % dist.world() == dist.rank():
            sdata = coll.open(name)
            cached_embeddings(sdata, coll.table(sdata), enc, encoder, cache="disk", image_key=config.data.image_key,
                              spot_diameter_um=config.data.spot_diameter_um, **kw)  # fmt: skip
    dist.barrier()
    run_dir = settings.cachedir / "runs" / uuid.uuid4().hex
    run_dir.mkdir(parents=True)
    try:
        shards: dict[str, Shard] = {}
        in_dim = 0
        for name in used:
            sdata = coll.open(name)
            adata = coll.table(sdata)
            missing = [g for g in genes if g not in adata.var_names]
            if missing:
                raise CpnnError(
                    f"Sample {name!r} lacks {len(missing)} panel genes (e.g. {missing[:3]}); every sample needs them."
                )
            z = cached_embeddings(sdata, adata, enc, encoder, cache="disk", image_key=config.data.image_key,
                                  spot_diameter_um=config.data.spot_diameter_um, **kw)  # fmt: skip
            rows = np.arange(adata.n_obs)
            is_train = tr[names.index(name)]
            counts = _write_counts(run_dir / f"{len(shards)}_counts.npy", adata, genes, rows, config.data.layer)
            if is_train:
                keep = np.asarray(counts.sum(1)) > 0
                if not keep.all():
                    logg.warning(
                        f"sample {name!r}: {int((~keep).sum())} spots have no counts in the panel and are left out"
                    )
                    rows = rows[keep]
                    counts = _write_counts(run_dir / f"{len(shards)}_kept.npy", adata, genes, rows, config.data.layer)
            x = z
            if config.data.context_um:
                xy, label = spot_coordinates_um(sdata, adata, np.ones(adata.n_obs, bool), image_key=config.data.image_key,
                                                spot_diameter_um=config.data.spot_diameter_um)  # fmt: skip
                x = np.lib.format.open_memmap(run_dir / f"{len(shards)}_x.npy", mode="w+", dtype=np.float16,
                                              shape=(adata.n_obs, 2 * z.shape[1]))  # fmt: skip
                x[:] = add_context(np.asarray(z, np.float32), xy, label, float(config.data.context_um))
                x.flush()
                x = np.load(run_dir / f"{len(shards)}_x.npy", mmap_mode="r")
            comp = None
            if is_train and head_cls.composition and config.head_options.composition_key:
                mask = np.zeros(adata.n_obs, bool)
                mask[rows] = True
                comp = reference_composition(adata, config.head_options.composition_key, mask, types)
            labels = None
            if is_train and sample_key is not None:
                check_key(adata, sample_key, argument=f"sample_key (sample {name!r})")
                labels = adata.obs[sample_key].astype(str).to_numpy()[rows]
            shards[name] = Shard(name, x, rows, counts, comp, labels)
            in_dim = int(x.shape[1])
            del sdata
        split = CollectionSplit(
            tr,
            val,
            names,
            genes,
            [shards[n] for n, t in zip(names, tr, strict=True) if t],
            [shards[n] for n, v in zip(names, val, strict=True) if v],
            in_dim=in_dim,
            run_dir=run_dir,
        )
    except BaseException:  # a failed read leaves no run folder behind
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if sample_key is not None:  # codes over the training samples' sample_key values, as in memory
        split.samples = sorted({str(v) for s in split.train_shards for v in s.sample})
        for s in split.train_shards:
            s.sample = np.searchsorted(split.samples, s.sample).astype(np.int64)
    if head_cls.composition:
        split.prototypes, split.cell_types = protos, types
        split.groups = prototype_groups(reference, config.head_options.prototypes_key)
        split.unmarked = unmarked_types(*_reference_only(protos, types))
    return split


def collection_inputs(data: Any, config: FitConfig, split: CollectionSplit, run: Run) -> Inputs:
    """A collection: rows of every training (validation) sample, read from disk a batch at a time."""
    train = ShardDataset(split.train_shards)
    val = ShardDataset(split.val_shards, validation=True) if split.val_shards else None
    return Inputs(train, val, split.in_dim, nn.Identity(), config.encoder_config)
