"""cp.tl.fit: train the composition network (or the direct baseline) on spots with images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from anndata import AnnData
from scanpy import logging as logg
from torch import nn

from .._core import check_key, check_obs_mask, get_table, is_spatialdata, selection_positions, uns_cpnn
from .._errors import CpnnError
from .._settings import settings
from ..data import PatchDataset, region_images
from ..models import HANDCRAFTED
from ..pp._embed import build_encoder, encoder_config
from ._inputs import (
    finetuned_config,
    model_inputs,
    panel_counts,
    panel_genes,
    panel_prototypes,
    prototype_groups,
    reference_composition,
)
from ._model import CPNN, build_head
from ._slides import Bags, bag_embeddings, slide_bags
from ._train import TrainData, TrainingDiverged, run_training


class _ToUnit(nn.Module):
    """uint8 patches -> float in [0, 1] in front of a fine-tuned encoder."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.float() / 255.0 if x.dtype == torch.uint8 else x)


def _patches(data, adata, mask, config, *, image_key, spot_diameter_um, batch_size) -> torch.Tensor:
    regions = region_images(data, adata, mask, image_key=image_key, spot_diameter_um=spot_diameter_um)
    ds = PatchDataset(regions, patch_size_um=config["patch_size_um"], out_px=config["patch_px"], block_size=batch_size)
    where = selection_positions(mask)
    out = torch.zeros((int(mask.sum()), 3, config["patch_px"], config["patch_px"]), dtype=torch.uint8)
    for i in range(len(ds)):
        idx, p = ds[i]
        out[torch.as_tensor(where[idx.numpy()])] = (p * 255).round().to(torch.uint8)
    return out


#: Configurations of :func:`fit` (explicit options override them). ``"paper"`` is the published model.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"residual": 0.0, "context_um": None, "loss": "nb"},
    "cpnn": {"residual": 0.0, "context_um": 150.0, "loss": "mse"},
}


def _fingerprint(cfg: dict, train_mask: np.ndarray, val_mask: np.ndarray, **settings_: Any) -> str:
    """Hash of what a checkpoint must match to be resumed: settings, panel and the spots on each side."""
    h = hashlib.sha256(json.dumps({**cfg, **settings_}, sort_keys=True, default=str).encode())
    h.update(np.packbits(train_mask).tobytes())
    h.update(np.packbits(val_mask).tobytes())
    return h.hexdigest()


def fit(
    data: AnnData | Any,
    *,
    train: Any = None,
    validation: Any = None,
    head: Literal["cpnn", "direct"] = "cpnn",
    encoder: str = "resnet18",
    weights: str | Path | None = None,
    pretrained: bool = False,
    finetune: bool = False,
    patch_size_um: float = 112.0,
    patch_px: int = 224,
    prototypes: Literal["learn", "freeze", "random"] = "learn",
    correction: bool = True,
    prototypes_key: str = "cpnn_prototypes",
    composition_key: str | None = None,
    proto_reg: float = 1e3,
    comp_reg: float = 1e3,
    hidden: tuple[int, ...] = (1024, 512),
    dropout: float = 0.0,
    preset: Literal["cpnn", "paper"] = "cpnn",
    residual: float | None = None,
    context_um: float | None = None,
    loss: Literal["nb", "mse"] | None = None,
    sample_key: str | None = None,
    epochs: int = 300,
    batch_size: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    patience: int = 30,
    layer: str | None = None,
    device: str = "auto",
    seed: int = 0,
    num_workers: int | None = None,
    image_key: str | None = None,
    spot_diameter_um: float | None = None,
    embedding_key: str = "cpnn_embedding",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    level: Literal["spot", "slide"] | None = None,
    slides: Any = None,
    max_patches: int = 4096,
    tiles_key: str = "cpnn_tiles",
    slide_key: str = "slide",
    table_key: str = "table",
) -> CPNN:
    """Train CPNN (or the direct baseline) to predict the panel's expression from spot images.

    Needs a gene panel (:func:`cpnn.pp.select_genes`) and, for ``head="cpnn"``, prototypes
    (:func:`cpnn.pp.build_prototypes`). With a frozen encoder (default) every spot is embedded once
    into ``obsm["cpnn_embedding"]``, reused by later fits with the same encoder settings.

    Parameters
    ----------
    data
        SpatialData (images, spot shapes, table of raw counts), or an AnnData whose
        ``obsm["cpnn_embedding"]`` was filled by :func:`cpnn.pp.embed`. At slide level: the
        AnnData of bulk samples (obs = slides, X = raw counts).
    train
        Training spots (or bulk samples): a boolean mask, a ``(column, values)`` tuple, or
        region/section names. Default: every spot not in ``validation``.
    validation
        Spots for early stopping (same forms). Default none: train for ``epochs`` epochs.
    head
        ``"cpnn"``: composition weights x cell-type prototypes (the paper). ``"direct"``: the same
        MLP straight to the genes, trained with MSE on log-normalised expression (the baseline).
    encoder
        ``"resnet18"`` or any timm architecture, or ``"handcrafted"`` colour/texture features.
    weights
        Local checkpoint for the encoder (e.g. a pathology foundation model).
    pretrained
        Use timm's pretrained weights (downloaded from its hub; networked machines only).
    finetune
        Train the encoder end to end with the head (flips and 90-degree rotations as augmentation).
    patch_size_um, patch_px
        Patch side around each spot in micrometres, and the encoder input size in pixels.
    prototypes
        ``"learn"`` (initialised from the atlas), ``"freeze"`` or ``"random"`` (from scratch).
    correction
        Learn the per-gene modality correction ``exp(alpha) * e + exp(beta)``.
    prototypes_key
        ``varm`` key of the prototypes.
    composition_key
        ``obsm`` key of a reference composition (DataFrame with the cell types as columns) to
        regularise the weights towards, when one exists.
    proto_reg, comp_reg
        Weights of the prototype and composition regularisers (1e3 in the paper).
    hidden, dropout
        MLP hidden sizes (the paper: 1024, 512) and dropout.
    preset
        ``"paper"``: the paper's model exactly (no residual, no spatial context, NB loss).
        ``"cpnn"``: the package's default configuration (see ``PRESETS`` and the benchmark page).
        Options passed explicitly override the preset.
    residual
        Strength of a per-gene log-scale residual from the same features (cpnn head):
        ``y * exp(r)`` with ``sum_g r_g^2 / residual`` added to the loss; 0 is the paper's model.
        :func:`cpnn.tl.predict` reports the share of the predicted variation the composition term
        explains.
    context_um
        Append to each spot's embedding the mean embedding of the spots of its region within this
        radius (micrometres), so every head sees the spot's surroundings (frozen encoder, spot level).
    loss
        ``"nb"`` (negative binomial on counts, the paper) or ``"mse"`` (squared error on log1p
        counts per 10,000) for the cpnn head.
    sample_key
        ``obs`` column naming each spot's sample (e.g. ``"section"``): the cpnn head's loss then
        gives every training sample its own per-gene scaling (L2-penalised), so that the
        composition network is not bent to one sample's technical gene scaling; predictions, on
        any sample, use none.
    epochs, batch_size, lr, weight_decay, patience
        Optimisation: AdamW with StepLR(50, 0.9) and gradient clipping at 0.5; early stopping
        after ``patience`` epochs without a better validation loss. ``batch_size`` defaults to
        256 spots, or 8 slides at slide level (the paper).
    layer
        Layer with raw counts (default ``X``).
    device
        ``"auto"`` (CUDA when present, with bf16 autocast), ``"cpu"`` or ``"cuda"``.
    seed
        Seed of the encoder's random initialisation, the head and the batch order. Same seed on
        CPU gives identical results.
    num_workers
        DataLoader workers reading patches (default ``cp.settings.num_workers``).
    image_key, spot_diameter_um
        Image choice and physical scale overrides (see :func:`cpnn.pp.embed`).
    embedding_key
        ``obsm`` key of the cached embeddings (the ``key_added`` of :func:`cpnn.pp.embed`), so
        that embeddings of several encoders can live side by side.
    checkpoint_dir
        Folder for an atomic checkpoint written after every epoch (weights, optimiser, random
        state, history), so that a killed run can continue.
    resume
        Continue from the checkpoint in ``checkpoint_dir`` (same data and settings); on CPU with
        the same seed the result equals an uninterrupted run. Without a checkpoint it starts anew.
    level
        ``"spot"`` (each spot is one patch) or ``"slide"`` (each bulk sample is the bag of its
        slide's tissue tiles, from :func:`cpnn.pp.tile`). Default: ``"slide"`` when ``slides`` is given.
    slides
        Slide level: a dict mapping each bulk sample (obs name) to its SpatialData or zarr path,
        or one SpatialData whose tiles table names each tile's sample in ``obs[slide_key]``.
    max_patches
        Slide level: at most this many random tiles per slide in each step (4096 in the paper);
        validation uses a fixed subset of the same size.
    tiles_key, slide_key
        Slide level: key of the tiles table, and its column naming each tile's bulk sample.
    table_key
        Key of the table.

    Returns
    -------
    The trained :class:`cpnn.CPNN`. Also writes ``uns["cpnn"]["fit"]`` (settings, best epoch) and
    ``uns["cpnn"]["history"]`` (loss per epoch), and ``obsm["cpnn_embedding"]`` for a frozen encoder.

    Notes
    -----
    At slide level the encoder stays frozen (tile embeddings are cached in each tiles table's
    ``obsm[embedding_key]``), a slide's prediction is the mean over its tiles of the corrected
    expression (cpnn head) or the direct head on the mean tile embedding, and the loss is on the
    bulk counts. Ctrl-C (KeyboardInterrupt) stops training and returns the best model so far. A loss that
    becomes NaN or infinite raises :class:`cpnn.tl.TrainingDiverged`, whose ``model`` attribute
    holds the model with the last good weights.
    """
    level = level or ("slide" if slides is not None else "spot")
    if level not in ("spot", "slide"):
        raise CpnnError(f"level={level!r}; use 'spot' or 'slide'.")
    if level == "slide":
        if slides is None:
            raise CpnnError("level='slide' needs slides=: a dict {sample: SpatialData} or one SpatialData with tiles.")
        if not isinstance(data, AnnData):
            raise CpnnError(f"At slide level data is the bulk AnnData (obs = slides); got {type(data).__name__}.")
        if finetune:
            raise CpnnError("finetune=True is spot-level only; slide level trains on cached tile embeddings.")
        if max_patches < 1:
            raise CpnnError(f"max_patches={max_patches} must be at least 1.")
    elif slides is not None:
        raise CpnnError("slides= is for level='slide'; drop it or pass level='slide'.")
    if sample_key is not None:
        if level == "slide":
            raise CpnnError("sample_key is spot level only; slides are the samples at slide level.")
        check_key(get_table(data, table_key), sample_key, argument="sample_key")
    if preset not in PRESETS:
        raise CpnnError(f"preset={preset!r}; use one of {list(PRESETS)}.")
    chosen = {**PRESETS[preset]}
    if finetune or level == "slide":  # a preset's spatial context needs cached spot embeddings
        chosen["context_um"] = None
    chosen.update(
        {k: v for k, v in {"residual": residual, "context_um": context_um, "loss": loss}.items() if v is not None}
    )
    residual, context_um, loss = float(chosen["residual"]), chosen["context_um"], chosen["loss"]
    if residual < 0:
        raise CpnnError(f"residual={residual} must be >= 0 (0 switches the residual path off).")
    if loss not in ("nb", "mse"):
        raise CpnnError(f"loss={loss!r}; use 'nb' or 'mse'.")
    if context_um is not None and (context_um < 0 or (context_um > 0 and (finetune or level == "slide"))):
        raise CpnnError(
            f"context_um={context_um} needs a positive radius, a frozen encoder and spot level; "
            "pass context_um=0 to switch the spatial context off."
        )
    context_um = float(context_um) if context_um else None
    batch_size = batch_size if batch_size is not None else (8 if level == "slide" else 256)
    start = logg.info(f"fitting cpnn (head={head!r}, encoder={encoder!r}, level={level!r})")
    adata = get_table(data, table_key)
    if head not in ("cpnn", "direct"):
        raise CpnnError(f"head={head!r}; use 'cpnn' or 'direct'.")
    if prototypes not in ("learn", "freeze", "random"):
        raise CpnnError(f"prototypes={prototypes!r}; use 'learn', 'freeze' or 'random'.")
    if finetune and encoder == HANDCRAFTED:
        raise CpnnError("encoder='handcrafted' has no weights to fine-tune; use a timm encoder or finetune=False.")
    if finetune and not is_spatialdata(data):
        raise CpnnError("finetune=True reads patches, so data must be a SpatialData with images.")
    if resume and checkpoint_dir is None:
        raise CpnnError("resume=True needs checkpoint_dir= (the folder of the interrupted run's checkpoint).")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise CpnnError(f"epochs={epochs}, batch_size={batch_size} and lr={lr} must be positive.")
    genes = panel_genes(adata)
    protos, types = panel_prototypes(adata, genes, prototypes_key) if head == "cpnn" else (None, [])
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
    counts_tr = panel_counts(adata, genes, train_mask, layer, argument="training")
    lib_tr = counts_tr.sum(1)
    if (lib_tr <= 0).any():
        keep = lib_tr > 0
        logg.warning(f"{int((~keep).sum())} training spots have no counts in the panel and are left out")
        rows = np.flatnonzero(train_mask)
        train_mask = train_mask.copy()
        train_mask[rows[~keep]] = False
        counts_tr, lib_tr = counts_tr[keep], lib_tr[keep]
        if not train_mask.any():
            raise CpnnError("No training spot has counts in the panel.")
    counts_va = panel_counts(adata, genes, val_mask, layer, argument="validation") if val_mask.any() else None

    dev = settings.resolve_device(device)
    workers = settings.num_workers if num_workers is None else num_workers
    config = encoder_config(
        encoder, weights=weights, pretrained=pretrained, seed=seed, patch_size_um=patch_size_um, patch_px=patch_px
    )
    enc = build_encoder(config)
    if level == "slide":
        bags = slide_bags(adata, slides, tiles_key=tiles_key, slide_key=slide_key)
        used = train_mask | val_mask
        z_bags = bag_embeddings(
            [b for b, u in zip(bags, used, strict=True) if u],
            config,
            enc,
            device=dev,
            num_workers=workers,
            image_key=image_key,
            key=embedding_key,
        )
        by_row = dict(zip(np.flatnonzero(used), z_bags, strict=True))
        x_tr = Bags([torch.as_tensor(by_row[i]) for i in np.flatnonzero(train_mask)], max_patches, seed)
        x_va = Bags([torch.as_tensor(by_row[i]) for i in np.flatnonzero(val_mask)], max_patches, seed)
        in_dim = x_tr.z[0].shape[1]
        model = nn.Identity()
    elif finetune:
        x_tr = _patches(
            data, adata, train_mask, config, image_key=image_key, spot_diameter_um=spot_diameter_um, batch_size=64
        )
        x_va = (
            _patches(
                data, adata, val_mask, config, image_key=image_key, spot_diameter_um=spot_diameter_um, batch_size=64
            )
            if val_mask.any()
            else None
        )
        in_dim = int(enc.out_dim)
        model: nn.Module = _ToUnit(enc)
    else:
        both = train_mask | val_mask
        z = model_inputs(
            data,
            adata,
            both,
            config,
            enc,
            context_um=context_um,
            device=dev,
            batch_size=64,
            num_workers=workers,
            image_key=image_key,
            spot_diameter_um=spot_diameter_um,
            key=embedding_key,
        )
        where = selection_positions(both)
        x_tr = torch.as_tensor(z[where[train_mask]])
        x_va = torch.as_tensor(z[where[val_mask]]) if val_mask.any() else None
        in_dim = z.shape[1]
        model = nn.Identity()
    cfg = {
        "head": head,
        "genes": genes,
        "cell_types": types,
        "prototypes": prototypes,
        "correction": bool(correction),
        "proto_reg": float(proto_reg),
        "comp_reg": float(comp_reg),
        "hidden": [int(h) for h in hidden],
        "dropout": float(dropout),
        "seed": int(seed),
        "finetune": bool(finetune),
        "in_dim": int(in_dim),
        "encoder_config": finetuned_config(config) if finetune else config,
        "median_library": float(np.median(lib_tr)),
        "layer": layer,
        "level": level,
        "max_patches": int(max_patches) if level == "slide" else 0,
        "groups": prototype_groups(adata, prototypes_key) if head == "cpnn" else {},
        "residual": residual if head == "cpnn" else 0.0,
        "loss": loss,
        "context_um": context_um,
        "preset": preset,
    }
    sample_tr = None
    if sample_key is not None and head == "cpnn":
        samples_tr = adata.obs[sample_key].astype(str).to_numpy()[train_mask]
        cfg["samples"] = sorted(set(samples_tr))
        sample_tr = np.searchsorted(cfg["samples"], samples_tr).astype(np.int64)
    torch.manual_seed(seed)  # after any data loading, which draws from the global generator
    head_module = build_head(cfg, in_dim, protos)
    if level == "slide":
        # the cpnn head sees tiles, the direct head mean-pooled slides: standardise what each sees
        inputs = x_tr.tiles() if head == "cpnn" else torch.stack([t.mean(0) for t in x_tr.z])
        head_module.head.standardise.fit(inputs)
    elif not finetune:
        head_module.standardise.fit(x_tr)
    comp_tr = reference_composition(adata, composition_key, train_mask, types) if head == "cpnn" else None
    comp_va = (
        reference_composition(adata, composition_key, val_mask, types) if head == "cpnn" and val_mask.any() else None
    )
    tr = TrainData(
        x_tr,
        torch.as_tensor(counts_tr),
        torch.as_tensor(lib_tr),
        None if comp_tr is None else torch.as_tensor(comp_tr),
        sample=None if sample_tr is None else torch.as_tensor(sample_tr),
    )
    va = None
    if counts_va is not None:
        va = TrainData(
            x_va,
            torch.as_tensor(counts_va),
            torch.as_tensor(counts_va.sum(1).clip(1.0)),
            None if comp_va is None else torch.as_tensor(comp_va),
            eval_batch_size=batch_size if level == "slide" else None,
        )
    model.to(dev)
    head_module.to(dev)
    fingerprint = _fingerprint(
        cfg,
        train_mask,
        val_mask,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
    )
    try:
        result = run_training(
            model,
            head_module,
            tr,
            va,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            patience=patience,
            seed=seed,
            device=dev,
            desc=f"fit {head}",
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
            resume=resume,
            fingerprint=fingerprint,
        )
    except TrainingDiverged as err:
        err.model = CPNN(cfg, enc.cpu().eval(), head_module.cpu().eval(), [])
        raise
    model.cpu().eval()
    head_module.cpu().eval()
    if result.stop_reason == "interrupted":
        logg.warning(f"training interrupted after {len(result.history)} epochs; returning the best model so far")
    cpnn = CPNN(cfg, enc.cpu().eval(), head_module, result.history)
    info = uns_cpnn(adata)
    info["fit"] = {
        "head": head,
        "encoder": encoder,
        "finetune": bool(finetune),
        "level": level,
        "preset": preset,
        "residual": cfg["residual"],
        "context_um": context_um or 0.0,
        "loss": loss,
        "prototypes": prototypes,
        "correction": bool(correction),
        "epochs": int(epochs),
        "best_epoch": int(result.best_epoch),
        "stopped_early": bool(result.stopped_early),
        "stop_reason": result.stop_reason,
        "resumed_from_epoch": int(result.resumed_from),
        "n_train": int(train_mask.sum()),
        "n_validation": int(val_mask.sum()),
        "lr": float(lr),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "device": dev,
    }
    keys = sorted({k for r in result.history for k in r})
    info["history"] = {k: np.array([r.get(k, np.nan) for r in result.history], dtype=float) for k in keys}
    logg.info(
        f"    trained {len(result.history)} epochs (best {result.best_epoch}) on {int(train_mask.sum())} "
        f"{'slides' if level == 'slide' else 'spots'}",
        time=start,
        deep="added\n    'fit', 'history' (adata.uns['cpnn'])",
    )
    return cpnn
