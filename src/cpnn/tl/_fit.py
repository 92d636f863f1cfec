"""cp.tl.fit: train the composition network (or a baseline head) on spots, tiles or slides.

``fit`` resolves its options into one frozen :class:`~cpnn.tl._config.FitConfig`, reads the two
sides of the split, builds the inputs for the level, trains (or solves) the head and records the
result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from anndata import AnnData
from scanpy import logging as logg
from torch import nn

from .._core import (
    EMBEDDING,
    OFF_SHARE,
    PROTOTYPES,
    TILES,
    Rows,
    Sample,
    Samples,
    bin_size_um,
    check_int,
    dist,
    get_table,
    renamed_arguments,
    switched_off,
    uns_cpnn,
    uses_cpu_threads,
)
from .._errors import CpnnError
from .._settings import settings
from ..data import is_collection
from ..models import build_encoder
from ..models.heads import SlideHead
from ._config import PRESETS, RUN_OPTIONS, FitConfig, resolve_config
from ._inputs import Split, build_inputs, read_collection, read_split
from ._model import CPNN, build_head
from ._targets import composition_targets, gene_scaling
from ._train import TrainingDiverged, TrainResult, fit_closed_form, run_training, training_warnings

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

__all__ = ["PRESETS", "fit"]


def _fingerprint(config: FitConfig, split: Split) -> str:
    """Hash of what a checkpoint must match to be resumed: settings, panel, spots on each side, data."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    h.update(np.packbits(split.train).tobytes())
    h.update(np.packbits(split.validation).tobytes())
    h.update(split.digest().encode())
    return h.hexdigest()


@renamed_arguments({"weights": "encoder_weights"}, since="0.3", removed_in="0.4")
@uses_cpu_threads
def fit(
    data: AnnData | SpatialData | Samples,
    *,
    train: Rows = None,
    validation: Rows = None,
    head: str = "cpnn",
    encoder: str | nn.Module | Callable = "resnet18",
    encoder_kwargs: dict[str, Any] | None = None,
    encoder_weights: str | Path | None = None,
    pretrained: bool = False,
    finetune: bool = False,
    patch_size_um: float = 112.0,
    patch_px: int | None = None,
    prototypes: Literal["learn", "freeze", "random"] = "learn",
    correction: bool = True,
    prototypes_key: str = PROTOTYPES,
    composition_key: str | None = None,
    unexplained: Literal["flat", "learned"] | None = None,
    proto_reg: float = 1e3,
    comp_reg: float | None = None,
    hidden: tuple[int, ...] = (1024, 512),
    dropout: float = 0.0,
    preset: Literal["cpnn", "paper"] = "cpnn",
    residual: float | None = None,
    context_um: float | None = None,
    loss: Literal["nb", "mse"] | None = None,
    sample_key: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float = 1e-2,
    patience: int | None = None,
    standardise: bool | None = None,
    init: Literal["xavier", "torch"] | None = None,
    alpha_init: Literal["scaling", "one"] | None = None,
    targets: Literal["deconvolve", "given"] | None = None,
    layer: str | None = None,
    device: str = "auto",
    seed: int = 0,
    num_workers: int | None = None,
    embed_batch_size: int = 64,
    image_key: str | None = None,
    spot_diameter_um: float | None = None,
    embedding_key: str = EMBEDDING,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    level: Literal["spot", "slide"] | None = None,
    slides: SpatialData | Mapping[str, Sample] | None = None,
    max_patches: int = 4096,
    tiles_key: str = TILES,
    slide_key: str = "slide",
    key_added: str = "cpnn",
    panel: AnnData | None = None,
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
        ``obsm["cpnn_embedding"]`` was filled by :func:`cpnn.pp.embed`. A collection of samples:
        ``{sample: SpatialData or zarr path}`` or a list of zarr paths, never concatenated in memory
        (each sample embedded once into the disk cache, training rows read from disk a batch at a
        time; ``train``/``validation`` then name samples). At slide level: the AnnData of bulk
        samples (obs = slides, X = raw counts).
    train
        Training spots (or bulk samples): a boolean mask, a ``(column, values)`` tuple, or
        region/section names. Default: every spot not in ``validation``.
    validation
        Spots for early stopping (same forms). Default none: train for ``epochs`` epochs.
    head
        A registered head (:data:`cpnn.models.HEADS`): ``"cpnn"``, composition weights x cell-type
        prototypes (the paper); ``"direct"``, the same MLP straight to the genes, trained with MSE on
        log-normalised expression (the baseline); ``"ridge"``, ridge regression from the embeddings
        to log-normalised expression in closed form, alpha chosen on the validation spots (the HEST
        benchmark's probe; frozen encoders only).
    encoder
        A pathology foundation model by name (``"uni"``, ``"uni2-h"``, ``"conch"``, ``"h-optimus-0"``,
        ``"virchow2"``, ``"gigapath"``, ``"phikon"``...; :data:`cpnn.models.PRESETS`), any timm
        architecture or ``hf-hub:`` id, ``"handcrafted"`` colour/texture features, ``"nuclei"``
        (nuclear morphometry at 0.5 um per pixel plus colour/texture; offline, no weights), or an
        ``nn.Module``/callable taking (N, 3, px, px) floats in [0, 1] and returning (N, D).
    encoder_kwargs
        Constructor settings of the encoder (timm: ``init_values``, ``reg_tokens``, ``mlp_layer``,
        ``dynamic_img_size``...), plus cpnn's own ``mean``/``std`` (input normalisation) and
        ``token`` (``"cls"``, ``"mean"``, ``"cls+mean"``) overriding the preset's or the model's.
    encoder_weights
        Local checkpoint of the encoder (``weights=`` before 0.3): a file (safetensors, ``pytorch_model.bin``, a state dict)
        or a downloaded hub folder with ``config.json``; loaded strictly (every tensor must fit).
    pretrained
        Use the hub's pretrained weights (timm's, or the preset's; networked machines only). Naming
        a preset implies it.
    finetune
        Train the encoder end to end with the head (flips and 90-degree rotations as augmentation).
    patch_size_um
        Side of the patch around each spot, in micrometres.
    patch_px
        Encoder input size in pixels (default: the encoder's own, e.g. 224 for UNI, 448 for CONCH,
        518 for DINOv2 architectures).
    prototypes
        ``"learn"`` (initialised from the atlas), ``"freeze"`` or ``"random"`` (from scratch).
    correction
        Learn the per-gene modality correction ``exp(alpha) * e + exp(beta)``.
    prototypes_key
        ``varm`` key of the prototypes.
    composition_key
        ``obsm`` key of a reference composition (DataFrame with the cell types as columns, e.g.
        from :func:`cpnn.pp.deconvolve` of the training spots) to regularise the weights towards.
        Only the training spots' rows are read. The head's weights count prototypes (fractions of
        cells with prototypes of an average cell), so the targets must be in those units, as
        :func:`cpnn.pp.deconvolve`'s are.
    unexplained
        Add an *unexplained* component to the composition (stereoscope's "dummy" type): one more
        weight, ``"unexplained"`` (grey in :func:`cpnn.pl.dominant`), whose profile is flat over the
        panel and counts cells of the types' median RNA content, for tissue the reference has no
        type for (fat without adipocytes, say). ``"flat"`` keeps that profile; ``"learned"`` learns
        it like the prototypes. fit's own targets then come from
        ``cp.pp.deconvolve(unexplained=...)`` with the same setting; targets you pass
        (``composition_key=``) need an ``"unexplained"`` column. ``None`` (both presets): none.
    proto_reg
        Weight of the regulariser keeping learned prototypes near the atlas (1e3 in the paper).
    comp_reg
        Weight of the composition loss towards ``composition_key``'s targets. Default: the
        preset's (1e3 in the paper; 1e4 in ``"cpnn"``, whose squared-error loss on log-scale
        genes is larger).
    hidden
        Hidden layer sizes of the head's MLP (the paper: 1024, 512).
    dropout
        Dropout rate between the MLP's layers, in [0, 1).
    preset
        ``"paper"``: the authors' model and training recipe as their code runs it: NB loss, no
        residual or spatial context, raw (not standardised) inputs, 8 spots (or slides) a step,
        up to 1000 epochs with patience 30, xavier-normal MLP, alpha initialised from the
        deconvolution's per-gene scaling, the composition loss always on (``targets="deconvolve"``),
        and float32 on CUDA. The paper's encoder is CONCH (``encoder="conch"``, see
        docs/foundation_models.md). ``"cpnn"``: the package's default configuration (see ``PRESETS``
        and the benchmark page), bf16 autocast on CUDA.
        Options passed explicitly override the preset; every option documented as "default: the
        preset's" takes its value from it.
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
    epochs
        Most epochs to train (default: the preset's; ``"paper"``: 1000).
    batch_size
        Rows a step (default: the preset's; ``"paper"``: 8 spots; slide level: 8 slides).
    lr
        Learning rate of AdamW (StepLR(50, 0.9) per epoch, gradient clipping at 0.5; default: the
        preset's; ``"paper"``: 1e-3).
    weight_decay
        Weight decay of AdamW.
    patience
        Epochs without a better validation criterion before training stops (default: the
        preset's, 30). The criterion is the head's data term without regularisers; for the NB loss
        the counts rescaled to 10,000 at library 10,000, as the authors' code validates.
    standardise
        z-score the head's input features with the training spots' mean and standard deviation
        (default: the preset's; the paper feeds raw features).
    init
        ``"xavier"``: xavier-normal MLP weights and log-dispersion drawn from N(0, 1), as the
        authors' code; ``"torch"``: PyTorch's default initialisation and log-dispersion 2.
        Default: the preset's.
    alpha_init
        ``"scaling"``: initialise the per-gene correction ``alpha`` at the log of the per-gene
        technical scaling that :func:`cpnn.pp.deconvolve` fitted with the composition targets (1 for
        genes it did not fit); ``"one"``: at log 1. Default: the preset's.
    targets
        ``"deconvolve"``: when the head has a composition, ``comp_reg > 0`` and no
        ``composition_key`` is given, deconvolve the training spots (:func:`cpnn.pp.deconvolve`, NB,
        the fit's seed; validation and test spots never) and supervise the composition with them,
        as the paper does. They are written to ``obsm[f"{key_added}_targets"]`` when the fit
        succeeds and reused by a later fit on the same counts, layer, prototypes and seed; a key
        holding a result no fit made is refused. ``"given"``: only ``composition_key``'s targets.
        Default: the preset's. Pass ``comp_reg=0`` for no composition loss at all.
    layer
        Layer with raw counts (default ``X``).
    device
        ``"auto"`` (CUDA when present, with bf16 autocast), ``"cpu"`` or ``"cuda"``.
    seed
        Seed of the encoder's random initialisation, the head and the batch order. Same seed on
        CPU gives identical results.
    num_workers
        DataLoader workers reading patches (default ``cp.settings.num_workers``).
    embed_batch_size
        Patches per encoder call when embedding spots or tiles.
    image_key
        Force this image element (default: the sharpest image covering the spots; see :func:`cpnn.pp.embed`).
    spot_diameter_um
        Spot diameter in micrometres, overriding the one derived from the data (see :func:`cpnn.pp.embed`).
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
    tiles_key
        Slide level: key of the tiles table.
    slide_key
        Slide level: the tiles table's column naming each tile's bulk sample.
    panel
        For a collection: the AnnData whose gene panel and prototypes every sample uses (default
        the first sample's table; run :func:`cpnn.pp.select_genes` and
        :func:`cpnn.pp.build_prototypes` on it).
    key_added
        Name of this fit's record, so that several fits (e.g. ``head="cpnn"`` and ``head="direct"``
        for comparison) coexist in ``uns["cpnn"]["fits"]``.
    table_key
        Key of the table.

    Returns
    -------
    The trained :class:`cpnn.CPNN`. Also writes ``uns["cpnn"]["fits"][key_added]`` (settings,
    outcome, warnings, versions and the per-epoch ``history``: training loss, validation loss and
    validation Spearman); ``uns["cpnn"]["fit"]`` and ``uns["cpnn"]["history"]`` hold the latest
    fit's; and ``obsm["cpnn_embedding"]`` for a frozen encoder.

    Notes
    -----
    At slide level the encoder stays frozen (tile embeddings are cached in each tiles table's
    ``obsm[embedding_key]``), a slide's prediction is the mean over its tiles of the corrected
    expression (cpnn head) or the direct head on the mean tile embedding, and the loss is on the
    bulk counts. Ctrl-C (KeyboardInterrupt) stops training and returns the best model so far. A loss that
    becomes NaN or infinite raises :class:`cpnn.tl.TrainingDiverged`, whose ``model`` attribute
    holds the model with the last good weights.

    Launched with several processes (``torchrun --nproc-per-node N``), ``fit`` joins the process group
    (NCCL on CUDA, gloo on the CPU), trains the head (and a fine-tuned encoder) with
    DistributedDataParallel, each process taking its share of every global batch of
    ``batch_size`` rows (so the result matches one process), computes each collection sample's
    embeddings in one process only, combines validation losses across processes for early
    stopping, and writes checkpoints from rank 0 only.
    """
    config = resolve_config({k: v for k, v in locals().items() if k not in RUN_OPTIONS})  # first: only the arguments
    if config.unit.bags and not isinstance(data, AnnData):
        raise CpnnError(f"At slide level data is the bulk AnnData (obs = slides); got {type(data).__name__}.")
    if resume and checkpoint_dir is None:
        raise CpnnError("resume=True needs checkpoint_dir= (the folder of the interrupted run's checkpoint).")
    start = logg.info(
        f"fitting cpnn (head={head!r}, encoder={config.encoder_config['encoder']!r}, level={config.level!r})"
    )
    dev = dist.setup(settings.resolve_device(device), timeout_s=settings.dist_timeout_s)  # joins under torchrun
    enc = build_encoder(config.encoder_config)
    workers = settings.num_workers if num_workers is None else num_workers
    if is_collection(data):
        adata = None
        config, targets = composition_targets(None, config, train, validation, key_added)
        split = read_collection(
            data, config, train, validation, panel=panel, encoder=enc, device=dev, num_workers=workers,
            embed_batch_size=check_int("embed_batch_size", embed_batch_size), table_key=table_key,
        )  # fmt: skip
    else:
        adata = get_table(data, table_key)
        config, targets = composition_targets(adata, config, train, validation, key_added)
        split = read_split(adata, config, train, validation, targets=None if targets is None else targets.table)
    try:
        inputs = build_inputs(
            data, adata, config, split, enc, sources=slides, device=dev, num_workers=workers,
            embed_batch_size=check_int("embed_batch_size", embed_batch_size),
        )  # fmt: skip
        fingerprint = _fingerprint(config.with_data(genes=split.genes, in_dim=inputs.in_dim), split)
        config = config.with_data(
            encoder_config=inputs.encoder_config, genes=split.genes, cell_types=split.cell_types, groups=split.groups,
            samples=split.samples, in_dim=inputs.in_dim, median_library=float(np.median(split.library_train)),
            bin_um=bin_size_um(table_key),
        )  # fmt: skip
        torch.manual_seed(config.seed)  # after any data loading, which draws from the global generator
        head_module = build_head(config, inputs.in_dim, split.prototypes)
        inner = getattr(head_module, "head", head_module)
        if inputs.standardise and not config.head_class.closed_form:
            z_train = inputs.train.standardisation_inputs(config.head_class.per_tile)
            if config.standardise:
                inner.fit_inputs(z_train)
            else:
                _check_raw_scale(z_train)
        scaling = gene_scaling(adata, config, list(split.genes), targets)
        if scaling is not None and hasattr(inner, "set_gene_scaling"):
            inner.set_gene_scaling(scaling)
        result = _train(config, inputs, head_module, enc, fingerprint, dev, checkpoint_dir, resume)
        model = CPNN(config, enc.cpu().eval(), head_module, result.history)
        notes = (
            []
            if config.head_class.closed_form
            else training_warnings(
                result, epochs=config.epochs, validated=bool(split.validation.any()), patience=config.patience
            )
        )
        off = _switched_off(config, inputs, head_module)
        if off:
            notes.append(
                f"cell type(s) {off} never exceed {OFF_SHARE:.0%} of any training spot's composition: the network switched "
                "them off. Supervise the composition with deconvolved targets (cp.pp.deconvolve on the training spots, "
                "then composition_key=), and add their markers to the panel (cp.pp.select_genes(markers=...))"
            )
        for note in notes:
            logg.warning(note)
        if adata is not None:
            if targets is not None:  # the targets are written only now that the fit succeeded
                targets.commit(adata)
            _record(adata, config, result, split, dev, notes, off, key_added)
    finally:  # each process's copy of the training rows goes, whether the fit succeeded or not
        if getattr(split, "run_dir", None) is not None:
            shutil.rmtree(split.run_dir, ignore_errors=True)
    logg.info(
        f"    trained {len(result.history)} epochs (best {result.best_epoch}) on {int(split.train.sum())} "
        f"{config.unit.samples}",
        time=start,
        deep="added\n    'fit', 'history' (adata.uns['cpnn'])",
    )
    return model


def _train(config, inputs, head, encoder, fingerprint, device, checkpoint_dir, resume) -> TrainResult:
    """The gradient loop (or the closed-form solution) for the built inputs and head."""
    module = inputs.module
    module.to(device)
    head.to(device)
    try:
        if config.head_class.closed_form:
            result = fit_closed_form(head, inputs.train, inputs.validation)
        else:
            result = run_training(
                module,
                head,
                inputs.train,
                inputs.validation,
                epochs=config.epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                weight_decay=config.weight_decay,
                patience=config.patience,
                seed=config.seed,
                device=device,
                desc=f"fit {config.head}",
                checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
                resume=resume,
                fingerprint=fingerprint,
                mixed_precision=config.precision == "bf16",
            )
    except TrainingDiverged as err:
        err.model = CPNN(config, encoder.cpu().eval(), head.cpu().eval(), [])
        raise
    module.cpu().eval()
    head.cpu().eval()
    if result.stop_reason == "interrupted":
        logg.warning(f"training interrupted after {len(result.history)} epochs; returning the best model so far")
    return result


#: Largest feature standard deviation fed raw into the MLP before ``fit`` warns (foundation-model
#: features, which the paper feeds raw, have standard deviations well below 10).
RAW_SD_LIMIT = 10.0


def _check_raw_scale(z: torch.Tensor) -> None:
    """Warn when raw (unstandardised) features are on a scale that saturates the MLP's softmax."""
    sd = z.float().std(0)
    if len(z) > 1 and float(sd.max()) > RAW_SD_LIMIT:
        logg.warning(
            f"standardise=False feeds raw features to the MLP, but one varies with a standard deviation of "
            f"{float(sd.max()):.3g} across the training spots: on such a scale the composition saturates. "
            "Pass standardise=True (or rescale the embeddings)."
        )


@torch.no_grad()
def _switched_off(config: FitConfig, inputs: Any, head: nn.Module) -> list[str]:
    """Cell types whose weight stays below the threshold on every training spot (cached embeddings only)."""
    if not config.head_class.composition or config.inputs != "embeddings" or isinstance(head, SlideHead):
        return []
    weights = head.eval()(inputs.train.standardisation_inputs(False).float())["weights"].numpy()
    return switched_off(weights, list(config.cell_types))


def _record(
    adata: AnnData,
    config: FitConfig,
    result: TrainResult,
    split: Split,
    device: str,
    notes: list[str],
    off: list[str],
    key_added: str,
) -> None:
    """Write the fit's settings, outcome and history into ``uns["cpnn"]``."""
    info = uns_cpnn(adata)
    info["fit"] = {
        **config.to_uns(),
        "best_epoch": int(result.best_epoch),
        "stopped_early": bool(result.stopped_early),
        "stop_reason": result.stop_reason,
        "resumed_from_epoch": int(result.resumed_from),
        "n_train": int(split.train.sum()),
        "n_validation": int(split.validation.sum()),
        "device": device,
        "warnings": list(notes),
        # training ran to its epoch cap with the validation loss still improving within the patience
        "still_improving_at_cap": any("still improving" in n for n in notes),
        "types_without_marker": list(split.unmarked),
        "types_switched_off": list(off),
        "key_added": key_added,
        "torch": str(torch.__version__),
        "threads": int(torch.get_num_threads()),
        "deterministic": bool(settings.deterministic),
    }
    keys = sorted({k for r in result.history for k in r})
    info["history"] = {k: np.array([r.get(k, np.nan) for r in result.history], dtype=float) for k in keys}
    info.setdefault("fits", {})[key_added] = {**info["fit"], "history": dict(info["history"])}
