"""The one record of a fit's settings: options resolved and validated once, presets applied, data facts added.

The same :class:`FitConfig` is stored in ``uns["cpnn"]["fit"]``, hashed into the checkpoint
fingerprint and kept as :attr:`cpnn.CPNN.config`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from torch import nn

from .._core import EMBEDDING, PROTOTYPES, TILES, check_int, check_number, to_uns
from .._errors import CpnnError
from ..models import HEADS, encoder_class, encoder_config
from ..models.heads import Head

#: Configurations of :func:`cpnn.tl.fit` (explicit options override them). ``"paper"`` is the authors'
#: model *and* training recipe, as their code runs it (docs/concepts.md, "How the network is trained").
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "residual": 0.0,
        "context_um": None,
        "loss": "nb",
        "comp_reg": 1e3,
        # the recipe around the model: raw features, 8 bags (spots) a step, 1000 epochs at most,
        # xavier-normal MLP, log-dispersion ~ N(0, 1), alpha from the deconvolution's gene scaling,
        # composition loss against a deconvolution of the training spots (made when none is given)
        "standardise": False,
        "batch_size": 8,
        "lr": 1e-3,
        "epochs": 1000,
        "patience": 30,
        "init": "xavier",
        "alpha_init": "scaling",
        "targets": "deconvolve",
    },
    # the squared-error loss sums over the panel's log-scale genes, so the composition loss needs
    # ten times the paper's weight to be felt (docs/benchmarks.md, "Compositions you can trust")
    "cpnn": {
        "residual": 0.0,
        "context_um": 150.0,
        "loss": "mse",
        "comp_reg": 1e4,
        # the step budget chosen on validation sections only (benchmarks/default_selection.py):
        # raw features, 256 spots a step at lr 3e-3, stopped by patience well before the cap
        "standardise": False,
        "batch_size": 256,
        "lr": 3e-3,
        "epochs": 1000,
        "patience": 30,
        "init": "torch",
        "alpha_init": "one",
        # the composition loss on by default, as in the paper: no cell type switched off (docs/benchmarks.md)
        "targets": "deconvolve",
    },
}
#: The options a preset sets (each ``None`` in :func:`cpnn.tl.fit`'s signature means "the preset's").
PRESET_OPTIONS = (
    "residual",
    "context_um",
    "loss",
    "comp_reg",
    "standardise",
    "batch_size",
    "lr",
    "epochs",
    "patience",
    "init",
    "alpha_init",
    "targets",
)
#: Allowed values of the preset options that are names.
CHOICES = {
    "loss": ("nb", "mse"),
    "init": ("xavier", "torch"),
    "alpha_init": ("scaling", "one"),
    "targets": ("deconvolve", "given"),
}


@dataclass(frozen=True)
class FitConfig:
    """Every setting of a fit, resolved (see :func:`cpnn.tl.fit` for their meaning), plus facts from the data.

    Readable as a mapping (``config["head"]``), as the model files and ``uns`` store it.
    """

    head: str = "cpnn"
    level: str = "spot"
    encoder_config: dict = field(default_factory=dict)
    finetune: bool = False
    prototypes: str = "learn"
    correction: bool = True
    prototypes_key: str = PROTOTYPES
    composition_key: str | None = None
    proto_reg: float = 1e3
    comp_reg: float = 1e3
    hidden: tuple[int, ...] = (1024, 512)
    dropout: float = 0.0
    preset: str = "paper"
    residual: float = 0.0
    context_um: float | None = None
    loss: str = "nb"
    sample_key: str | None = None
    epochs: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 30
    standardise: bool = True
    init: str = "torch"
    alpha_init: str = "one"
    targets: str = "given"
    layer: str | None = None
    seed: int = 0
    max_patches: int = 0
    tiles_key: str = TILES
    slide_key: str = "slide"
    embedding_key: str = EMBEDDING
    image_key: str | None = None
    spot_diameter_um: float | None = None
    # facts from the data, added once the inputs are built
    genes: tuple[str, ...] = ()
    cell_types: tuple[str, ...] = ()
    groups: dict = field(default_factory=dict)
    samples: tuple[str, ...] = ()
    in_dim: int = 0
    median_library: float = 1.0
    bin_um: float | None = None  # bin size of a Visium HD training table (from its name), else None

    # ---- mapping access, as the stored form reads
    def __getitem__(self, key: str) -> Any:
        if key not in _NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """``config[key]``, or ``default`` for an unknown key."""
        return getattr(self, key) if key in _NAMES else default

    def __contains__(self, key: object) -> bool:
        return key in _NAMES

    def keys(self) -> list[str]:
        """The setting names."""
        return list(_NAMES)

    @property
    def head_class(self) -> type[Head]:
        """The registered head class of :attr:`head`."""
        return HEADS.get(self.head)

    @property
    def inputs(self) -> str:
        """Which inputs the head trains on: ``"slide"`` bags, ``"patches"`` (fine-tuning) or ``"embeddings"``."""
        return "slide" if self.level == "slide" else "patches" if self.finetune else "embeddings"

    def with_data(self, **facts: Any) -> FitConfig:
        """A copy with the facts from the data (genes, cell types, input width, ...)."""
        return replace(self, **_normalise(facts))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    def to_uns(self) -> dict[str, Any]:
        """The settings in a form ``uns`` can store (``None`` as ``""``)."""
        return to_uns(self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FitConfig:
        """The configuration stored by :meth:`to_dict` (or by an older cpnn: missing settings take defaults).

        Unknown keys are ignored; a value of the wrong kind is an error.
        """
        if not isinstance(values, dict):
            raise CpnnError(f"A model configuration must be a JSON object, got {type(values).__name__}.")
        known = {k: v for k, v in values.items() if k in _NAMES}
        if "samples" in known and known["samples"] is None:
            known["samples"] = ()
        try:
            return cls(**_normalise(known))
        except (TypeError, ValueError) as err:
            raise CpnnError(f"The model configuration is malformed ({err}).") from err


_NAMES = tuple(f.name for f in fields(FitConfig))
_TUPLES = ("hidden", "genes", "cell_types", "samples")


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for k in _TUPLES:
        if k in out and out[k] is not None:
            out[k] = tuple(out[k])
    return out


def resolve_config(
    *,
    head: str,
    level: str | None,
    slides: Any,
    encoder: Any,
    encoder_kwargs: dict | None,
    weights: Any,
    pretrained: bool,
    finetune: bool,
    patch_size_um: float,
    patch_px: int | None,
    prototypes: str,
    correction: bool,
    prototypes_key: str,
    composition_key: str | None,
    proto_reg: float,
    comp_reg: float | None,
    hidden: tuple[int, ...],
    dropout: float,
    preset: str,
    residual: float | None,
    context_um: float | None,
    loss: str | None,
    sample_key: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    weight_decay: float,
    patience: int | None,
    standardise: bool | None,
    init: str | None,
    alpha_init: str | None,
    targets: str | None,
    layer: str | None,
    seed: int,
    max_patches: int,
    tiles_key: str,
    slide_key: str,
    embedding_key: str,
    image_key: str | None,
    spot_diameter_um: float | None,
) -> FitConfig:
    """Validate every option of :func:`cpnn.tl.fit` and apply the preset; nothing is read from the data."""
    level = level or ("slide" if slides is not None else "spot")
    if level not in ("spot", "slide"):
        raise CpnnError(f"level={level!r}; use 'spot' or 'slide'.")
    if level == "slide":
        if slides is None:
            raise CpnnError("level='slide' needs slides=: a dict {sample: SpatialData} or one SpatialData with tiles.")
        if finetune:
            raise CpnnError("finetune=True is spot-level only; slide level trains on cached tile embeddings.")
        if max_patches < 1:
            raise CpnnError(f"max_patches={max_patches} must be at least 1.")
        if sample_key is not None:
            raise CpnnError("sample_key is spot level only; slides are the samples at slide level.")
    elif slides is not None:
        raise CpnnError("slides= is for level='slide'; drop it or pass level='slide'.")
    if preset not in PRESETS:
        raise CpnnError(f"preset={preset!r}; use one of {list(PRESETS)}.")
    chosen = {**PRESETS[preset]}
    if finetune or level == "slide":  # a preset's spatial context needs cached spot embeddings
        chosen["context_um"] = None
    if level == "slide":  # the paper's 8 bags a step are 8 slides; a spot preset's larger batch is not meant for slides
        chosen["batch_size"] = 8
    explicit = {
        "residual": residual,
        "context_um": context_um,
        "loss": loss,
        "comp_reg": comp_reg,
        "standardise": standardise,
        "batch_size": batch_size,
        "lr": lr,
        "epochs": epochs,
        "patience": patience,
        "init": init,
        "alpha_init": alpha_init,
        "targets": targets,
    }
    chosen.update({k: v for k, v in explicit.items() if v is not None})
    for name, allowed in CHOICES.items():
        if chosen[name] not in allowed:
            raise CpnnError(f"{name}={chosen[name]!r}; use one of {list(allowed)}.")
    residual, context_um, loss, comp_reg = (chosen[k] for k in ("residual", "context_um", "loss", "comp_reg"))
    residual = check_number("residual", residual, low=0.0)
    if context_um is not None:
        context_um = check_number("context_um", context_um, low=0.0)
        if context_um > 0 and (finetune or level == "slide"):
            raise CpnnError(
                f"context_um={context_um} needs a frozen encoder and spot level; "
                "pass context_um=0 to switch the spatial context off."
            )
    head_cls = HEADS.get(head)
    if prototypes not in ("learn", "freeze", "random"):
        raise CpnnError(f"prototypes={prototypes!r}; use 'learn', 'freeze' or 'random'.")
    enc = encoder_config(
        encoder,
        weights=weights,
        pretrained=pretrained,
        seed=int(seed),
        patch_size_um=check_number("patch_size_um", patch_size_um, low=0.0, strict=True),
        patch_px=None if patch_px is None else check_int("patch_px", patch_px),
        kwargs=encoder_kwargs,
    )
    trainable = encoder_class(enc["encoder"]).trainable
    if isinstance(encoder, nn.Module):
        trainable = any(p.requires_grad for p in encoder.parameters())
    elif not isinstance(encoder, str):
        trainable = False
    if finetune and not trainable:
        name = enc["encoder"].split(":")[1] if not isinstance(encoder, str) else encoder
        raise CpnnError(f"encoder={name!r} has no weights to fine-tune; use a timm encoder or finetune=False.")
    if finetune and head_cls.closed_form:
        raise CpnnError(f"head={head!r} is fitted in closed form on cached embeddings; it cannot fine-tune an encoder.")
    hidden = tuple(check_int("hidden", h) for h in hidden) if not isinstance(hidden, int) else (hidden,)
    if head_cls.composition:
        composition = {"residual": residual, "sample_key": sample_key}
    else:  # composition options mean nothing to a head without cell types
        composition = {"residual": 0.0, "sample_key": None}
    return FitConfig(
        head=head,
        level=level,
        encoder_config=enc,
        finetune=bool(finetune),
        prototypes=prototypes,
        correction=bool(correction),
        prototypes_key=prototypes_key,
        composition_key=composition_key,
        proto_reg=check_number("proto_reg", proto_reg, low=0.0),
        comp_reg=check_number("comp_reg", comp_reg, low=0.0),
        hidden=hidden,
        dropout=check_number("dropout", dropout, low=0.0, high=1.0),
        preset=preset,
        context_um=context_um or None,
        loss=loss,
        epochs=check_int("epochs", chosen["epochs"]),
        batch_size=check_int("batch_size", chosen["batch_size"]),
        lr=check_number("lr", chosen["lr"], low=0.0, strict=True),
        weight_decay=check_number("weight_decay", weight_decay, low=0.0),
        patience=check_int("patience", chosen["patience"]),
        standardise=bool(chosen["standardise"]),
        init=chosen["init"],
        alpha_init=chosen["alpha_init"],
        targets=chosen["targets"],
        layer=layer,
        seed=int(seed),
        max_patches=int(max_patches) if level == "slide" else 0,
        tiles_key=tiles_key,
        slide_key=slide_key,
        embedding_key=embedding_key,
        image_key=image_key,
        spot_diameter_um=None
        if spot_diameter_um is None
        else check_number("spot_diameter_um", spot_diameter_um, low=0.0, strict=True),
        **composition,
    )
