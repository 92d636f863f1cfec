"""The one record of a fit's settings: options resolved and validated once, presets applied, data facts added.

The same :class:`FitConfig` is stored in ``uns["cpnn"]["fit"]``, hashed into the checkpoint
fingerprint and kept as :attr:`cpnn.CPNN.config`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from torch import nn

from .._core import EMBEDDING, PROTOTYPES, TILES, check_int, check_number, check_unexplained, to_uns
from .._errors import CpnnError
from ..models import HEADS, encoder_class, encoder_config
from ..models.heads import Head
from ._levels import LEVELS, Level, get_level

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
        # the authors' code trains in float32 on CUDA (no autocast)
        "precision": "fp32",
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
        "precision": "bf16",  # bf16 autocast on CUDA (no effect on the CPU)
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
    unexplained: str | None = None
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
    precision: str = "bf16"  # set by the preset only: "bf16" autocast on CUDA, or "fp32"
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
    def unit(self) -> Level:
        """The :class:`~cpnn.tl._levels.Level` of :attr:`level`: what one training sample is."""
        return LEVELS[self.level]

    @property
    def inputs(self) -> str:
        """Which inputs the head trains on: ``"slide"`` bags, ``"patches"`` (fine-tuning) or ``"embeddings"``."""
        return self.unit.inputs(finetune=self.finetune)

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


#: Options of :func:`cpnn.tl.fit` that say where the data is or how to run, not what is fitted.
RUN_OPTIONS = (
    "data",
    "train",
    "validation",
    "device",
    "num_workers",
    "embed_batch_size",
    "checkpoint_dir",
    "resume",
    "key_added",
    "panel",
    "table_key",
)
#: Options of :func:`cpnn.tl.fit` that become :attr:`FitConfig.encoder_config` (and ``slides``, which sets the level).
ENCODER_OPTIONS = ("encoder", "encoder_kwargs", "encoder_weights", "pretrained", "patch_size_um", "patch_px")
#: Fields of :class:`FitConfig` that are facts from the data or derived (``precision``: the preset's
#: only), not options of :func:`cpnn.tl.fit`.
DERIVED = (
    "encoder_config", "genes", "cell_types", "groups", "samples", "in_dim", "median_library", "bin_um", "precision",
)  # fmt: skip


def resolve_config(options: dict[str, Any]) -> FitConfig:
    """Validate every option of :func:`cpnn.tl.fit` and apply the preset; nothing is read from the data.

    ``options``: ``fit``'s arguments but :data:`RUN_OPTIONS`, by name. Each option is written once
    in ``fit``'s signature (and docstring) and once as a :class:`FitConfig` field: the options
    needing no check pass through by name, the others are checked here.
    """
    o = dict(options)
    expected = set(_NAMES) - set(DERIVED) | set(ENCODER_OPTIONS) | {"slides"}
    if set(o) != expected:
        raise TypeError(f"resolve_config: unexpected {sorted(set(o) - expected)}, missing {sorted(expected - set(o))}")
    finetune, head = o["finetune"], o["head"]
    unit = get_level(o["level"], slides=o["slides"])
    unit.check(o)
    if o["preset"] not in PRESETS:
        raise CpnnError(f"preset={o['preset']!r}; use one of {list(PRESETS)}.")
    chosen = {**PRESETS[o["preset"]], **unit.preset_overrides}
    if finetune:  # a preset's spatial context needs cached spot embeddings
        chosen["context_um"] = None
    chosen.update({k: o[k] for k in PRESET_OPTIONS if o[k] is not None})
    for name, allowed in CHOICES.items():
        if chosen[name] not in allowed:
            raise CpnnError(f"{name}={chosen[name]!r}; use one of {list(allowed)}.")
    context_um = chosen["context_um"]
    if context_um is not None:
        context_um = check_number("context_um", context_um, low=0.0)
        if context_um > 0 and (finetune or unit.bags):
            raise CpnnError(
                f"context_um={context_um} needs a frozen encoder and spot level; "
                "pass context_um=0 to switch the spatial context off."
            )
    head_cls = HEADS.get(head)
    check_unexplained(o["unexplained"])
    if o["unexplained"] and not head_cls.composition:
        raise CpnnError(
            f"unexplained={o['unexplained']!r} adds a component to a composition, but head={head!r} has none; "
            "use head='cpnn' or drop unexplained=."
        )
    if o["prototypes"] not in ("learn", "freeze", "random"):
        raise CpnnError(f"prototypes={o['prototypes']!r}; use 'learn', 'freeze' or 'random'.")
    encoder = o["encoder"]
    enc = encoder_config(
        encoder,
        weights=o["encoder_weights"],
        pretrained=o["pretrained"],
        seed=check_int("seed", o["seed"], minimum=0),
        patch_size_um=check_number("patch_size_um", o["patch_size_um"], low=0.0, strict=True),
        patch_px=None if o["patch_px"] is None else check_int("patch_px", o["patch_px"]),
        kwargs=o["encoder_kwargs"],
    )
    trainable = encoder_class(enc["encoder"]).trainable
    if isinstance(encoder, nn.Module):
        trainable = any(p.requires_grad for p in encoder.parameters())
    elif not isinstance(encoder, str):
        trainable = False
    if finetune and not trainable:
        name = enc["encoder"].split(":")[1] if not isinstance(encoder, str) else encoder
        raise CpnnError(f"encoder={name!r} has no weights to fine-tune; use a timm encoder or finetune=False.")
    if finetune and "stain" in enc:
        raise CpnnError(
            "encoder_kwargs['stain'] normalises the patches of a frozen encoder's embeddings; fine-tuning reads raw "
            "patches. Drop the stain setting or pass finetune=False."
        )
    if finetune and head_cls.closed_form:
        raise CpnnError(f"head={head!r} is fitted in closed form on cached embeddings; it cannot fine-tune an encoder.")
    hidden = o["hidden"]
    hidden = tuple(check_int("hidden", h) for h in hidden) if not isinstance(hidden, int) else (hidden,)
    spot_um = o["spot_diameter_um"]
    values = {k: o[k] for k in _NAMES if k in o}  # the options that need no check, by name
    values.update(
        level=unit.name,
        encoder_config=enc,
        finetune=bool(finetune),
        correction=bool(o["correction"]),
        proto_reg=check_number("proto_reg", o["proto_reg"], low=0.0),
        comp_reg=check_number("comp_reg", chosen["comp_reg"], low=0.0),
        hidden=hidden,
        dropout=check_number("dropout", o["dropout"], low=0.0, high=1.0),
        residual=check_number("residual", chosen["residual"], low=0.0),
        context_um=context_um or None,
        loss=chosen["loss"],
        epochs=check_int("epochs", chosen["epochs"]),
        batch_size=check_int("batch_size", chosen["batch_size"]),
        lr=check_number("lr", chosen["lr"], low=0.0, strict=True),
        weight_decay=check_number("weight_decay", o["weight_decay"], low=0.0),
        patience=check_int("patience", chosen["patience"]),
        standardise=bool(chosen["standardise"]),
        init=chosen["init"],
        alpha_init=chosen["alpha_init"],
        targets=chosen["targets"],
        precision=chosen["precision"],
        seed=check_int("seed", o["seed"], minimum=0),
        max_patches=check_int("max_patches", o["max_patches"]) * bool(unit.bags),
        spot_diameter_um=None if spot_um is None else check_number("spot_diameter_um", spot_um, low=0.0, strict=True),
    )
    if not head_cls.composition:  # composition options mean nothing to a head without cell types
        values.update(residual=0.0, sample_key=None)
    return FitConfig(**values)
