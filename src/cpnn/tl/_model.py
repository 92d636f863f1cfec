"""The trained model object: encoder, head, gene panel, cell types; saved as one file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._core import UNEXPLAINED, renamed_arguments, save_atomic, state_digest
from .._errors import CpnnError
from ..models import build_encoder, file_digest, is_module_key, module_class, module_key
from ..models.encoders import register_module
from ..models.heads import HEADS, Head, SlideHead
from ._config import FitConfig

FORMAT = "cpnn-model"
FORMAT_VERSION = 2
#: Format versions this release reads (1: before checksums; encoder weights always stored).
READABLE = (1, 2)


def build_head(config: FitConfig, in_dim: int, prototypes: np.ndarray | None) -> nn.Module:
    """Create the head described by ``config`` (wrapped for slide level)."""
    head = HEADS.get(config.head).from_config(config, in_dim, prototypes)
    return config.unit.wrap(head)


class CPNN:
    """A trained cpnn model, as returned by :func:`cpnn.tl.fit`.

    Holds the encoder, the head (composition network with prototypes, or a baseline), the
    configuration of the fit (gene panel and cell types included) and the training history. Use
    :func:`cpnn.tl.predict` to apply it, :meth:`save` / :meth:`load` to keep it.
    """

    def __init__(
        self, config: FitConfig | dict, encoder: nn.Module, head: nn.Module, history: list[dict] | None = None
    ) -> None:
        self.config = config if isinstance(config, FitConfig) else FitConfig.from_dict(config)
        self.encoder = encoder
        self.head = head
        self.history = history or []
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """A short id of this model: a digest of its configuration and weights (what predictions record)."""
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
            h.update(state_digest(self.head.state_dict()).encode())
            h.update(state_digest(self.encoder.state_dict()).encode())
            self._fingerprint = h.hexdigest()[:12]
        return self._fingerprint

    @property
    def tile_head(self) -> Head:
        """The head applied to one patch (the slide-level wrapper's inner head)."""
        return self.head.head if isinstance(self.head, SlideHead) else self.head

    @property
    def has_composition(self) -> bool:
        """Whether the head outputs a cell-type composition."""
        return bool(self.tile_head.composition)

    @property
    def genes(self) -> list[str]:
        """The predicted gene panel, in model order."""
        return list(self.config.genes)

    @property
    def cell_types(self) -> list[str]:
        """Cell types of the composition weights (empty for heads without a composition)."""
        return list(self.config.cell_types) if self.has_composition else []

    @property
    def groups(self) -> dict[str, str]:
        """Display group of each cell type, when the prototypes are finer than what is shown (else empty)."""
        return dict(self.config.groups or {})

    @property
    def prototypes(self) -> np.ndarray | None:
        """Learned prototypes, genes x K (``None`` for heads without prototypes)."""
        learned = getattr(self.tile_head, "learned_prototypes", None)
        return None if learned is None else learned().T

    @property
    def level(self) -> str:
        """``"spot"`` (one patch per sample) or ``"slide"`` (a bag of tiles per sample)."""
        return self.config.level

    def __repr__(self) -> str:
        c = self.config
        n_types = len([t for t in c.cell_types if t != UNEXPLAINED])
        k = (
            f", {n_types} cell types" + (" + unexplained" if c.get("unexplained") else "")
            if self.has_composition
            else ""
        )
        k += f", {self.level} level" if self.config.unit.bags else ""
        return (
            f"CPNN(head={c.head!r}, encoder={c.encoder_config['encoder']!r}, "
            f"{len(c.genes)} genes{k}, finetune={c.finetune}, epochs trained={len(self.history)})"
        )

    def encoder_is_external(self) -> bool:
        """Whether the encoder can be rebuilt from where it came from: pretrained (hub) or a local weights file."""
        c = self.config.encoder_config
        user_module = is_module_key(c["encoder"])
        return not self.config.finetune and bool(c.get("pretrained") or c.get("weights") or user_module)

    def save(self, path: str | os.PathLike, *, encoder_weights: bool | None = None) -> None:
        """Write the model to one file, atomically, with a SHA-256 of its contents.

        Parameters
        ----------
        path
            Destination file (conventionally ``*.pt``).
        encoder_weights
            Store the encoder's weights in the file. Default: only when they cannot be rebuilt
            from their source: a fine-tuned or randomly initialised encoder is saved whole; a
            frozen pretrained encoder (hub weights or a local file, e.g. a pathology foundation
            model of several GB) is saved as its identity (name, weights file and SHA-256, a digest
            of its weights), and :meth:`load` re-attaches it.
        """
        whole = (not self.encoder_is_external()) if encoder_weights is None else bool(encoder_weights)
        state = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": json.dumps(self.config.to_dict()),
            "history": json.dumps(self.history),
            "encoder": state if whole else {},
            "encoder_saved": whole,
            "encoder_sha256": state_digest(state),
            "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
        }
        payload["sha256"] = _payload_digest(payload)
        path = Path(path)
        try:
            save_atomic(payload, path)
        except (OSError, RuntimeError) as e:  # torch reports an unwritable folder as a RuntimeError
            detail = getattr(e, "strerror", None) or str(e).splitlines()[0]
            raise CpnnError(
                f"Cannot write the model to {str(path)!r} ({detail}); pass a path in a folder you can write to."
            ) from e

    @classmethod
    @renamed_arguments({"weights": "encoder_weights"}, since="0.3", removed_in="0.4")
    def load(
        cls, path: str | os.PathLike, *, encoder_weights: str | os.PathLike | None = None, encoder: Any = None
    ) -> CPNN:
        """Load a model written by :meth:`save`; no code from the file is executed.

        Parameters
        ----------
        path
            The model file.
        encoder_weights
            For a model saved without its encoder's weights: the local weights file it was trained
            with (checked by SHA-256; ``weights=`` before 0.3). Default: the file at the recorded path, or the hub for
            pretrained timm weights.
        encoder
            For a model trained with a user ``nn.Module``/callable encoder: that module again (a
            frozen one must have the same weights; a fine-tuned one gets the saved weights).

        Notes
        -----
        A file whose contents do not match its SHA-256, whose configuration is malformed, or whose
        weights do not fit its configuration is refused with :class:`cpnn.CpnnError`.
        """
        path = Path(path)
        if not path.is_file():
            raise CpnnError(f"path={str(path)!r} is not a file.")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CpnnError(f"{str(path)!r} is not a readable cpnn model file: {e}") from e
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CpnnError(f"{str(path)!r} is not a cpnn model file.")
        version = _version(payload.get("format_version"), path)
        if version not in READABLE:
            raise CpnnError(
                f"{str(path)!r} has model format version {payload.get('format_version')}, this cpnn reads version "
                f"{' or '.join(map(str, READABLE))}; use the cpnn release that wrote it, or retrain."
            )
        if version >= 2 and payload.get("sha256") != _payload_digest(payload):
            raise CpnnError(
                f"{str(path)!r} is corrupt: its contents do not match the SHA-256 written with it. "
                "Restore the file from a copy, or retrain."
            )
        _check_finite(payload, path)
        config, history = _read_config(payload, path)
        if encoder is not None:
            _attach_module(encoder, config, bool(payload.get("encoder_saved", True)))
        encoder = _load_encoder(payload, config, path, encoder_weights)
        head = build_head(config, config.in_dim, None)
        try:
            head.load_state_dict(payload["head"])
        except (RuntimeError, KeyError, TypeError) as e:
            raise CpnnError(
                f"{str(path)!r}: the head's weights do not fit its configuration ({len(config.genes)} genes, "
                f"{len(config.cell_types)} cell types): {str(e).splitlines()[0]}"
            ) from e
        return cls(config, encoder.eval(), head.eval(), history)


#: Keys every stored configuration has (older files may lack the others, which take defaults).
REQUIRED = ("head", "genes", "encoder_config", "in_dim")


def _payload_digest(payload: dict) -> str:
    h = hashlib.sha256()
    for key in ("format", "format_version", "config", "history", "encoder_saved", "encoder_sha256"):
        h.update(f"{key}={payload.get(key)!r}|".encode())
    for part in ("encoder", "head"):
        value = payload.get(part)
        h.update(state_digest(value).encode() if isinstance(value, dict) else b"?")
    return h.hexdigest()


def _check_finite(payload: dict, path: Path) -> None:
    """Refuse a file whose weights hold NaN or infinite values (a damaged file, or a run that diverged)."""
    bad = [
        f"{part}.{name}"
        for part in ("head", "encoder")
        for name, value in (payload.get(part) or {}).items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if bad:
        raise CpnnError(
            f"{str(path)!r}: {len(bad)} weight tensors hold NaN or infinite values (e.g. {bad[:3]}); the file is "
            "damaged or the training diverged. Restore the file from a copy, or retrain."
        )


def _version(value: Any, path: Path) -> int:
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise CpnnError(f"{str(path)!r} has no valid model format version ({value!r}).") from None
    if version != value:
        raise CpnnError(f"{str(path)!r} has no valid model format version ({value!r}).")
    return version


def _read_config(payload: dict, path: Path) -> tuple[FitConfig, list]:
    try:
        raw = json.loads(payload["config"])
        history = json.loads(payload.get("history", "[]"))
    except (KeyError, TypeError, ValueError) as e:
        raise CpnnError(f"{str(path)!r}: the stored configuration is not valid JSON ({e}).") from e
    missing = [k for k in REQUIRED if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise CpnnError(f"{str(path)!r}: the stored configuration lacks {missing}; the file is not usable.")
    return FitConfig.from_dict(raw), history


def _attach_module(module: Any, config: FitConfig, saved: bool) -> None:
    """Make a user's encoder module available under the key its model recorded."""
    recorded = str(config.encoder_config["encoder"])
    if not is_module_key(recorded):
        raise CpnnError("encoder= is for models trained with a user module; this one used " + repr(recorded) + ".")
    key = module_key(module)
    if key != recorded:
        same_class = module_class(key) == module_class(recorded)
        if not (saved and same_class):
            raise CpnnError(
                f"encoder= is not the module this model was trained with (recorded {module_class(recorded)} with "
                "another weights digest); pass that module."
            )
        register_module(recorded, module)


def _load_encoder(payload: dict, config: FitConfig, path: Path, weights: Any) -> nn.Module:
    enc = dict(config.encoder_config)
    if payload.get("encoder_saved", True):  # format 1 always saved the encoder
        # the architecture only: the stored weights replace whatever its source would give
        encoder = build_encoder(
            {**enc, "weights": "", "weights_sha256": "", "pretrained": False, "stored_weights": True}
        )
        try:
            encoder.load_state_dict(payload["encoder"])
        except (RuntimeError, KeyError, TypeError) as e:
            raise CpnnError(f"{str(path)!r}: the stored encoder weights do not fit {enc['encoder']!r}: {e}") from e
        return encoder
    recorded = enc.get("weights_sha256", "")
    if weights is not None:
        given = Path(weights)
        if not given.is_file():
            raise CpnnError(f"encoder_weights={str(weights)!r} is not a file.")
        if recorded and file_digest(given.resolve()) != recorded:
            raise CpnnError(
                f"encoder_weights={str(weights)!r} is not the file this model was trained with (SHA-256 "
                f"{file_digest(given.resolve())[:12]}..., expected {recorded[:12]}...); pass that file."
            )
        enc["weights"] = str(given.resolve())
    elif enc.get("weights"):
        stored = Path(enc["weights"])
        if not stored.is_file() or (recorded and file_digest(stored) != recorded):
            raise CpnnError(
                f"{str(path)!r} was saved without its encoder's weights; it was trained with {stored.name} "
                f"(SHA-256 {recorded[:12]}...), which is not at {str(stored)!r} any more (or changed). "
                "Pass CPNN.load(path, encoder_weights=<that file>)."
            )
    encoder = build_encoder(enc)
    if state_digest(encoder.state_dict()) != payload.get("encoder_sha256"):
        raise CpnnError(
            f"{str(path)!r}: the encoder rebuilt from {enc['encoder']!r} differs from the one the model was trained "
            "with (other weights or library versions). Pass the original file as CPNN.load(path, encoder_weights=...), "
            "or save models with model.save(path, encoder_weights=True)."
        )
    return encoder


def model_summary(model: CPNN) -> dict[str, Any]:
    """What a prediction records about the model that made it."""
    return {
        "head": model.config.head,
        "encoder": model.config.encoder_config["encoder"],
        "level": model.level,
        "genes": list(model.genes),
        "cell_types": model.cell_types,
    }
