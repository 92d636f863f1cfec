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
    OFF_SHARE,
    Rows,
    Sample,
    Samples,
    bin_size_um,
    dist,
    renamed_arguments,
    switched_off,
    uns_cpnn,
    uses_cpu_threads,
)
from .._errors import CpnnError
from .._settings import settings
from ..models import build_encoder
from ..models.heads import SlideHead
from ._config import PRESETS, FitConfig, fit_doc, resolve_config
from ._inputs import Run, Split
from ._kinds import kind_for
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


_FIT_DOC = """Train CPNN (or a baseline head) to predict the panel's expression from spot images.

Needs a gene panel (:func:`cpnn.pp.select_genes`) and, for ``head="cpnn"``, prototypes
(:func:`cpnn.pp.build_prototypes`). With a frozen encoder (default) every spot is embedded once
into ``obsm["cpnn_embedding"]``, reused by later fits with the same encoder settings.

``fit`` takes the handful of choices made every time; the other options are fields of the
records their consumers read, passed as ``head_kwargs=``, ``train_kwargs=``, ``data_kwargs=``
and ``encoder_kwargs=`` (listed below, each with its default: the ``"cpnn"`` preset's). The flat
keywords of cpnn 0.3 (``fit(epochs=50)``) still work until 0.5, with a ``FutureWarning`` naming
the new place.

Parameters
----------
data
    SpatialData (images, spot shapes, table of raw counts), or an AnnData whose
    ``obsm["cpnn_embedding"]`` was filled by :func:`cpnn.pp.embed`. A collection of samples:
    ``{sample: SpatialData or zarr path}`` or a list of zarr paths, never concatenated in memory
    (``train``/``validation`` then name samples). At slide level: the AnnData of bulk samples
    (obs = slides, X = raw counts). Which input kind reads it: :data:`cpnn.tl.INPUT_KINDS`.
train
    Training spots (or bulk samples): a boolean mask, a ``(column, values)`` tuple, or
    region/section names. Default: every spot not in ``validation``.
validation
    Spots for early stopping (same forms). Default none: train for ``epochs`` epochs.
head
    A registered head (:data:`cpnn.models.HEADS`): ``"cpnn"``, composition weights x cell-type
    prototypes (the paper); ``"direct"``, the same MLP straight to the genes, trained with MSE on
    log-normalised expression; ``"ridge"``, ridge regression from the embeddings in closed form,
    alpha chosen on the validation spots (frozen encoders only).
head_kwargs
    The head's own options (its :attr:`~cpnn.models.Head.Options` record). ``head="cpnn"``
    (:class:`cpnn.models.CPNNOptions`):

{head_options}

    ``head="direct"`` takes ``hidden``, ``dropout``, ``init`` and ``standardise``
    (:class:`cpnn.models.MLPOptions`); ``head="ridge"`` none.
encoder
    A pathology foundation model by name (``"uni"``, ``"uni2-h"``, ``"conch"``, ``"h-optimus-0"``,
    ``"virchow2"``, ``"gigapath"``, ``"phikon"``...; :data:`cpnn.models.PRESETS`), any timm
    architecture or ``hf-hub:`` id, ``"handcrafted"`` colour/texture features, ``"nuclei"``
    (nuclear morphometry plus colour/texture; offline, no weights), or an ``nn.Module``/callable
    taking (N, 3, px, px) floats in [0, 1] and returning (N, D).
encoder_kwargs
    Constructor settings of the encoder (timm: ``init_values``, ``reg_tokens``...), cpnn's own
    ``mean``/``std`` (input normalisation), ``token`` (``"cls"``, ``"mean"``, ``"cls+mean"``),
    ``stain``, ``segment`` (nuclei), and the encoder options (:class:`cpnn.models.EncoderOptions`):

{encoder_options}
finetune
    Train the encoder end to end with the head (flips and 90-degree rotations as augmentation).
train_kwargs
    How the head is trained (:class:`cpnn.tl.TrainOptions`):

{train_options}
data_kwargs
    Where the data is and how its inputs are read (:class:`cpnn.tl.DataOptions`):

{data_options}
preset
    ``"cpnn"``: the package's default configuration (the defaults listed here; bf16 autocast on
    CUDA). ``"paper"``: the authors' model and training recipe as their code runs it (NB loss, raw
    features, 8 spots or slides a step, lr 1e-3, xavier-normal MLP, alpha from the deconvolution's
    gene scaling, no spatial context, float32); the paper's encoder is CONCH
    (``encoder="conch"``). Options you pass override the preset (:data:`cpnn.tl.PRESETS`).
level
    ``"spot"`` (each spot is one patch) or ``"slide"`` (each bulk sample is the bag of its
    slide's tissue tiles, from :func:`cpnn.pp.tile`). Default: ``"slide"`` when ``slides`` is given.
slides
    Slide level: a dict mapping each bulk sample (obs name) to its SpatialData or zarr path,
    or one SpatialData whose tiles table names each tile's sample.
seed
    Seed of the encoder's random initialisation, the head and the batch order. Same seed on
    CPU gives identical results.
device
    ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
checkpoint_dir
    Folder for an atomic checkpoint written after every epoch (weights, optimiser, random
    state, history), so that a killed run can continue.
resume
    Continue from the checkpoint in ``checkpoint_dir`` (same data and settings); on CPU with
    the same seed the result equals an uninterrupted run. Without a checkpoint it starts anew.
key_added
    Name of this fit's record, so that several fits coexist in ``uns["cpnn"]["fits"]``.
**options
    The flat keywords of cpnn 0.3, each routed to its record with a ``FutureWarning`` (until 0.5).

Returns
-------
The trained :class:`cpnn.CPNN`. Also writes ``uns["cpnn"]["fits"][key_added]`` (settings,
outcome, warnings, versions and the per-epoch ``history``: training loss, validation loss and
validation Spearman); ``uns["cpnn"]["fit"]`` and ``uns["cpnn"]["history"]`` hold the latest
fit's; and ``obsm["cpnn_embedding"]`` for a frozen encoder.

Notes
-----
``targets="deconvolve"`` (both presets) deconvolves the training spots (:func:`cpnn.pp.deconvolve`,
NB, the fit's seed; validation and test spots never) when no ``composition_key`` is given, writes
them to ``obsm[f"{key_added}_targets"]`` when the fit succeeds, and reuses them in a later fit on
the same counts, layer, prototypes and seed. At slide level the encoder stays frozen, a slide's
prediction is the mean over its tiles of the corrected expression (cpnn head) or the direct head on
the mean tile embedding, and the loss is on the bulk counts. Ctrl-C (KeyboardInterrupt) stops
training and returns the best model so far. A loss that becomes NaN or infinite raises
:class:`cpnn.tl.TrainingDiverged`, whose ``model`` attribute holds the model with the last good
weights. Launched with several processes (``torchrun --nproc-per-node N``), ``fit`` trains with
DistributedDataParallel, each process taking its share of every global batch (so the result
matches one process), and writes checkpoints from rank 0 only.
"""


@renamed_arguments({"weights": "encoder_weights"}, since="0.3", removed_in="0.4")
@uses_cpu_threads
def fit(
    data: AnnData | SpatialData | Samples,
    *,
    train: Rows = None,
    validation: Rows = None,
    head: str = "cpnn",
    head_kwargs: dict[str, Any] | None = None,
    encoder: str | nn.Module | Callable = "resnet18",
    encoder_kwargs: dict[str, Any] | None = None,
    finetune: bool = False,
    train_kwargs: dict[str, Any] | None = None,
    data_kwargs: dict[str, Any] | None = None,
    preset: Literal["cpnn", "paper"] = "cpnn",
    level: Literal["spot", "slide"] | None = None,
    slides: SpatialData | Mapping[str, Sample] | None = None,
    seed: int = 0,
    device: str = "auto",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    key_added: str = "cpnn",
    **options: Any,
) -> CPNN:
    """Train CPNN (or a baseline head); the full docstring is ``_FIT_DOC`` with each record's fields written in."""
    config = resolve_config(
        head=head, head_kwargs=head_kwargs, encoder=encoder, encoder_kwargs=encoder_kwargs, finetune=finetune,
        train_kwargs=train_kwargs, data_kwargs=data_kwargs, preset=preset, level=level, slides=slides, seed=seed,
        flat=options,
    )  # fmt: skip
    if resume and checkpoint_dir is None:
        raise CpnnError("resume=True needs checkpoint_dir= (the folder of the interrupted run's checkpoint).")
    kind = kind_for(data, level=config.level, finetune=config.finetune)
    start = logg.info(
        f"fitting cpnn (head={head!r}, encoder={config.encoder_config['encoder']!r}, level={config.level!r}, "
        f"input kind {kind.name!r})"
    )
    dev = dist.setup(settings.resolve_device(device), timeout_s=settings.dist_timeout_s)  # joins under torchrun
    enc = build_encoder(config.encoder_config)
    run = Run(encoder=enc, device=dev, slides=slides, table=kind.table(data, config))
    config, targets = composition_targets(run.table, config, train, validation, key_added)
    run.targets = None if targets is None else targets.table
    split = kind.read(data, config, train, validation, run)
    try:
        inputs = kind.inputs(data, config, split, run)
        fingerprint = _fingerprint(config.with_data(genes=split.genes, in_dim=inputs.in_dim), split)
        config = config.with_data(
            encoder_config=inputs.encoder_config, genes=split.genes, cell_types=split.cell_types, groups=split.groups,
            samples=split.samples, in_dim=inputs.in_dim, median_library=float(np.median(split.library_train)),
            bin_um=bin_size_um(config.data.table_key),
        )  # fmt: skip
        torch.manual_seed(config.seed)  # after any data loading, which draws from the global generator
        head_module = build_head(config, inputs.in_dim, split.prototypes)
        inner = getattr(head_module, "head", head_module)
        if inputs.standardise and not config.head_class.closed_form:
            z_train = inputs.train.standardisation_inputs(config.head_class.per_tile)
            if config.head_option("standardise", False):
                inner.fit_inputs(z_train)
            else:
                _check_raw_scale(z_train)
        scaling = gene_scaling(run.table, config, list(split.genes), targets)
        if scaling is not None and hasattr(inner, "set_gene_scaling"):
            inner.set_gene_scaling(scaling)
        result = _train(config, inputs, head_module, enc, fingerprint, dev, checkpoint_dir, resume)
        model = CPNN(config.with_options("data", panel=None), enc.cpu().eval(), head_module, result.history)
        notes = (
            []
            if config.head_class.closed_form
            else training_warnings(
                result,
                epochs=config.training.epochs,
                validated=bool(split.validation.any()),
                patience=config.training.patience,
            )
        )
        off = _switched_off(config, inputs, head_module)
        if off:
            notes.append(
                f"cell type(s) {off} never exceed {OFF_SHARE:.0%} of any training spot's composition: the network switched "
                "them off. Supervise the composition with deconvolved targets (cp.pp.deconvolve on the training spots, "
                "then head_kwargs={'composition_key': ...}), and add their markers to the panel "
                "(cp.pp.select_genes(markers=...))"
            )
        for note in notes:
            logg.warning(note)
        if run.table is not None:
            if targets is not None:  # the targets are written only now that the fit succeeded
                targets.commit(run.table)
            _record(run.table, config, result, split, dev, notes, off, key_added)
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


fit.__doc__ = fit_doc(_FIT_DOC)


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
                config.training,
                seed=config.seed,
                device=device,
                desc=f"fit {config.head}",
                checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
                resume=resume,
                fingerprint=fingerprint,
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
            f"head_kwargs={{'standardise': False}} feeds raw features to the MLP, but one varies with a standard deviation of "
            f"{float(sd.max()):.3g} across the training spots: on such a scale the composition saturates. "
            "Pass head_kwargs={'standardise': True} (or rescale the embeddings)."
        )


@torch.no_grad()
def _switched_off(config: FitConfig, inputs: Any, head: nn.Module) -> list[str]:
    """Cell types whose weight stays below the threshold on every training spot (cached embeddings only)."""
    if not config.head_class.composition or config.finetune or isinstance(head, SlideHead):
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
