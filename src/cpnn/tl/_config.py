"""The one record of a fit's settings, made of the options records their consumers own.

Each option is a field of one record: the head's own (:attr:`cpnn.models.Head.Options`, found
through the head registry), training (:class:`~cpnn.tl._train.TrainOptions`, which
:func:`~cpnn.tl._train.run_training` takes whole), the data (:class:`~cpnn.tl._inputs.DataOptions`,
which the input kinds read) and the encoder (:class:`cpnn.models.EncoderOptions`, resolved once into
the encoder spec). A preset is a named partial over those records. The :class:`FitConfig` holding
them is stored flat in ``uns["cpnn"]["fit"]`` and in model files (every field name is unique
across the records), hashed into the checkpoint fingerprint and kept as :attr:`cpnn.CPNN.config`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Any

from torch import nn

from .._core import check_int, options_doc, to_uns
from .._errors import CpnnError
from ..models import HEADS, EncoderOptions, encoder_class, module_class
from ..models.heads import Head, HeadOptions
from ._data_options import DataOptions
from ._levels import LEVELS, Level, get_level
from ._train import TrainOptions

#: Configurations of :func:`cpnn.tl.fit`: partials over the options records (``"head"``: the head's
#: own options, applied where the head has them; ``"train"``, ``"data"``). ``"cpnn"`` is the records'
#: defaults; ``"paper"`` is the authors' model *and* training recipe, as their code runs it
#: (docs/concepts.md, "How the network is trained"). Options passed to ``fit`` override the preset.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        # NB loss, no residual; raw features, xavier-normal MLP with log-dispersion ~ N(0, 1), alpha from
        # the deconvolution's gene scaling, the composition loss against a deconvolution of the training spots
        "head": {
            "loss": "nb",
            "comp_reg": 1e3,
            "residual": 0.0,
            "standardise": False,
            "init": "xavier",
            "alpha_init": "scaling",
            "targets": "deconvolve",
        },
        # 8 bags (spots) a step, 1000 epochs at most, in float32 on CUDA (no autocast)
        "train": {"batch_size": 8, "lr": 1e-3, "epochs": 1000, "patience": 30, "precision": "fp32"},
        "data": {"context_um": None},
    },
    # the records' defaults: squared error on log-scale genes with ten times the paper's composition
    # weight (docs/benchmarks.md, "Compositions you can trust"); a 150 um spatial context; 256 spots a
    # step at lr 3e-3, stopped by patience (chosen on validation sections only,
    # benchmarks/default_selection.py); bf16 autocast on CUDA
    "cpnn": {},
}
#: The keyword of :func:`cpnn.tl.fit` that carries each record's options.
KEYWORDS = {"head": "head_kwargs", "train": "train_kwargs", "data": "data_kwargs", "encoder": "encoder_kwargs"}
#: Old model files lack options that later cpnn added; they were trained with these values (the
#: defaults of that time), which differ from today's. (A spot-level file before 0.4 also stored
#: ``max_patches`` 0, read as unset: :meth:`FitConfig.from_dict`.)
MIGRATION: dict[str, Any] = {
    "preset": "paper",
    "comp_reg": 1e3,
    "epochs": 300,
    "lr": 1e-3,
    "standardise": True,
    "targets": "given",
    "context_um": None,
    "loss": "nb",
}


def records(head: str) -> dict[str, type]:
    """The options record of each group for ``head`` (its own record from the head registry)."""
    return {"head": HEADS.get(head).Options, "train": TrainOptions, "data": DataOptions, "encoder": EncoderOptions}


def owner(name: str) -> str | None:
    """The group whose record has a field ``name`` (any registered head's options count), or ``None``."""
    if name in EncoderOptions.names():
        return "encoder"
    for group, rec in (("train", TrainOptions), ("data", DataOptions)):
        if name in rec.names():
            return group
    if any(name in HEADS.get(h).Options.names() for h in HEADS):
        return "head"
    return None


@dataclass(frozen=True)
class FitConfig:
    """Every setting of a fit, resolved, in the records their consumers read, plus facts from the data.

    Readable as a flat mapping (``config["lr"]``), as the model files and ``uns`` store it.
    """

    head: str
    level: str
    preset: str
    seed: int
    finetune: bool
    encoder_config: dict
    head_options: HeadOptions
    training: TrainOptions
    data: DataOptions
    # facts from the data, added once the inputs are built
    genes: tuple[str, ...] = ()
    cell_types: tuple[str, ...] = ()
    groups: dict = field(default_factory=dict)
    samples: tuple[str, ...] = ()
    in_dim: int = 0
    median_library: float = 1.0
    bin_um: float | None = None  # bin size of a Visium HD training table (from its name), else None

    # ---- the flat, stored form
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, flat (tuples as lists; the data's run settings, such as ``panel``, left out)."""
        flat = {
            "head": self.head, "level": self.level, "preset": self.preset, "seed": self.seed,
            "finetune": self.finetune, "encoder_config": self.encoder_config,
            **self.head_options.as_dict(), **self.training.as_dict(), **self.data.as_dict(),
            "genes": self.genes, "cell_types": self.cell_types, "groups": self.groups, "samples": self.samples,
            "in_dim": self.in_dim, "median_library": self.median_library, "bin_um": self.bin_um,
        }  # fmt: skip
        return json.loads(json.dumps(flat))

    def _holder(self, key: str) -> Any:
        """The object whose attribute ``key`` is: this record, or the options record that stores it."""
        if key in _TOP:
            return self
        for record in (self.head_options, self.training, self.data):
            if key in record.as_dict():
                return record
        raise KeyError(key)

    def __getitem__(self, key: str) -> Any:
        return getattr(self._holder(key), key)

    def get(self, key: str, default: Any = None) -> Any:
        """``config[key]``, or ``default`` for a key the stored form does not have."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def keys(self) -> list[str]:
        """The setting names of the stored form."""
        return list(self.to_dict())

    def to_uns(self) -> dict[str, Any]:
        """The settings in a form ``uns`` can store (``None`` as ``""``)."""
        return to_uns(self.to_dict())

    @property
    def head_class(self) -> type[Head]:
        """The registered head class of :attr:`head`."""
        return HEADS.get(self.head)

    @property
    def unit(self) -> Level:
        """The :class:`~cpnn.tl._levels.Level` of :attr:`level`: what one training sample is."""
        return LEVELS[self.level]

    def head_option(self, name: str, default: Any = None) -> Any:
        """The head's option ``name``, or ``default`` for a head without it (``sample_key`` of the direct head)."""
        return getattr(self.head_options, name, default)

    def with_data(self, **facts: Any) -> FitConfig:
        """A copy with the facts from the data (genes, cell types, input width, ...)."""
        for k in ("genes", "cell_types", "samples"):
            if facts.get(k) is not None:
                facts[k] = tuple(facts[k])
        return replace(self, **facts)

    def with_options(self, group: str, **values: Any) -> FitConfig:
        """A copy with ``values`` set in the ``group`` record (``"head"``, ``"train"``, ``"data"``)."""
        attr = {"head": "head_options", "train": "training", "data": "data"}[group]
        return replace(self, **{attr: getattr(self, attr).replace(**values)})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FitConfig:
        """The configuration stored by :meth:`to_dict`, older files migrated (:data:`MIGRATION`).

        Unknown keys are ignored; a value of the wrong kind is an error.
        """
        if not isinstance(values, dict):
            raise CpnnError(f"A model configuration must be a JSON object, got {type(values).__name__}.")
        v = {**MIGRATION, **values}
        if v.get("max_patches") == 0:  # spot-level files before 0.4 stored 0 for this slide-level option
            del v["max_patches"]
        if v.get("samples") is None:
            v["samples"] = ()
        try:
            head = str(v.get("head", "cpnn"))
            recs = records(head)
            parts = {g: recs[g].make({k: v[k] for k in recs[g].names() if k in v}) for g in ("head", "train", "data")}
            return cls(
                head=head, level=str(v.get("level", "spot")), preset=str(v["preset"]), seed=int(v.get("seed", 0)),
                finetune=bool(v.get("finetune", False)), encoder_config=dict(v.get("encoder_config", {})),
                head_options=parts["head"], training=parts["train"], data=parts["data"],
                genes=tuple(v.get("genes", ())), cell_types=tuple(v.get("cell_types", ())),
                groups=dict(v.get("groups") or {}), samples=tuple(v["samples"]), in_dim=int(v.get("in_dim", 0)),
                median_library=float(v.get("median_library", 1.0)), bin_um=v.get("bin_um"),
            )  # fmt: skip
        except (TypeError, ValueError, CpnnError) as err:
            raise CpnnError(f"The model configuration is malformed ({err}).") from err


_MISSING = object()
_TOP = tuple(f.name for f in fields(FitConfig) if f.name not in ("head_options", "training", "data"))


def route_flat(flat: dict[str, Any], head: str) -> dict[str, dict[str, Any]]:
    """Options passed to ``fit`` as flat keywords (before 0.4), by the record that owns each; warns once.

    A ``None`` meant "the preset's" and is dropped. An option of another head's record is an
    error naming the fix (0.3 dropped some of them silently).
    """
    routed: dict[str, dict[str, Any]] = {g: {} for g in KEYWORDS}
    if not flat:
        return routed
    groups = {name: owner(name) for name in flat}
    unknown = [k for k, g in groups.items() if g is None]
    if unknown:
        raise TypeError(f"fit() got unexpected keyword argument(s) {unknown}")
    own = HEADS.get(head).Options.names()
    foreign = [k for k, v in flat.items() if groups[k] == "head" and k not in own and v is not None]
    if foreign:
        raise CpnnError(
            f"{foreign} are options of another head; head={head!r} has none of them ({own} are its options). "
            "Drop them, or choose the head they belong to (head='cpnn')."
        )
    moved: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        group = groups[name]
        moved.setdefault(KEYWORDS[group], {})[name] = value
        if value is not None and (group != "head" or name in own):
            routed[group][name] = value
    new = ", ".join(f"{kw}={{{', '.join(f'{k!r}: {_short(v)}' for k, v in kv.items())}}}" for kw, kv in moved.items())
    warnings.warn(
        f"fit's options moved into records (cpnn 0.4): pass {new} instead of "
        f"{', '.join(n + '=' for n in flat)}. The flat keywords work until cpnn 0.5.",
        FutureWarning,
        stacklevel=6,  # the caller of fit (through fit's two decorators and resolve_config)
    )
    return routed


def _short(value: Any) -> str:
    """``repr(value)`` for a plain value, ``...`` for anything else (an AnnData, a path object)."""
    plain = value is None or isinstance(value, str | int | float | bool | tuple | list)
    return repr(value) if plain and len(repr(value)) <= 40 else "..."


def resolve_config(
    *,
    head: str,
    head_kwargs: dict[str, Any] | None,
    encoder: Any,
    encoder_kwargs: dict[str, Any] | None,
    finetune: bool,
    train_kwargs: dict[str, Any] | None,
    data_kwargs: dict[str, Any] | None,
    preset: str,
    level: str | None,
    slides: Any,
    seed: int,
    flat: dict[str, Any],
) -> FitConfig:
    """Validate every option of :func:`cpnn.tl.fit`, apply the preset and the level; nothing is read from the data.

    Each record's value is its default, then the preset's, then the level's, then the user's.
    """
    head_cls = HEADS.get(head)
    if preset not in PRESETS:
        raise CpnnError(f"preset={preset!r}; use one of {list(PRESETS)}.")
    seed = check_int("seed", seed, minimum=0)
    recs = records(head)
    routed = route_flat(flat, head)
    given = {"head": head_kwargs, "train": train_kwargs, "data": data_kwargs}
    enc_kwargs = dict(encoder_kwargs or {})
    given["encoder"] = {k: enc_kwargs.pop(k) for k in EncoderOptions.names() if k in enc_kwargs}
    for group, values in given.items():
        if values is not None and not isinstance(values, dict):
            raise CpnnError(f"{KEYWORDS[group]} must be a dict of options, got {type(values).__name__}.")
        twice = sorted(set(values or {}) & set(routed[group]))
        if twice:
            raise CpnnError(
                f"{twice} passed both flat and in {KEYWORDS[group]}=; pass them in {KEYWORDS[group]}= only."
            )
    unit = get_level(level, slides=slides)
    chosen: dict[str, dict[str, Any]] = {}
    for group in KEYWORDS:
        names = recs[group].names()
        layer = {k: v for k, v in PRESETS[preset].get(group, {}).items() if k in names}
        layer.update({k: v for k, v in unit.preset_overrides.items() if k in names})
        if finetune and group == "data":  # a preset's spatial context needs cached spot embeddings
            layer["context_um"] = None
        chosen[group] = {**layer, **routed[group], **(given[group] or {})}
    opts = {g: recs[g].make(chosen[g], argument=KEYWORDS[g]) for g in KEYWORDS}
    unit.check(slides=slides, finetune=finetune, head=opts["head"])
    context_um = opts["data"].context_um
    if context_um and (finetune or unit.bags):
        raise CpnnError(
            f"context_um={context_um} needs a frozen encoder and spot level; "
            "pass data_kwargs={'context_um': 0} to switch the spatial context off."
        )
    enc = opts["encoder"].spec(encoder, seed=seed, kwargs=enc_kwargs)
    trainable = encoder_class(enc["encoder"]).trainable
    if isinstance(encoder, nn.Module):
        trainable = any(p.requires_grad for p in encoder.parameters())
    elif not isinstance(encoder, str):
        trainable = False
    if finetune and not trainable:
        name = module_class(enc["encoder"]) if not isinstance(encoder, str) else encoder
        raise CpnnError(f"encoder={name!r} has no weights to fine-tune; use a timm encoder or finetune=False.")
    if finetune and "stain" in enc:
        raise CpnnError(
            "encoder_kwargs['stain'] normalises the patches of a frozen encoder's embeddings; fine-tuning reads raw "
            "patches. Drop the stain setting or pass finetune=False."
        )
    if finetune and head_cls.closed_form:
        raise CpnnError(f"head={head!r} is fitted in closed form on cached embeddings; it cannot fine-tune an encoder.")
    data = opts["data"].replace(context_um=context_um or None)
    return FitConfig(
        head=head, level=unit.name, preset=preset, seed=seed, finetune=bool(finetune), encoder_config=enc,
        head_options=opts["head"], training=opts["train"], data=data,
    )  # fmt: skip


def fit_doc(template: str) -> str:
    """:func:`cpnn.tl.fit`'s docstring: ``template`` with the records' fields written in (each option documented once)."""
    parts = {
        "{head_options}": HEADS.get("cpnn").Options,
        "{encoder_options}": EncoderOptions,
        "{train_options}": TrainOptions,
        "{data_options}": DataOptions,
    }
    for marker, record in parts.items():
        template = template.replace(marker, "\n".join(options_doc(record, indent="    ")))
    return template
