"""Encoders: image patches -> embeddings.

Names resolve in order: a registered family (``"handcrafted"``, ``"nuclei"``), a foundation-model preset
(:data:`PRESETS`: ``"uni"``, ``"uni2-h"``, ``"conch"``, ``"h-optimus-0"``, ``"virchow2"``, ...),
else a timm architecture or ``hf-hub:`` id. Any ``nn.Module`` or callable works too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..._core import Options, option, renamed_arguments, sha256_file, stat_key
from ..._errors import CpnnError
from ...data._stain import stain_config
from .._registry import Registry
from ._base import Encoder, Uint8Input
from ._handcrafted import HandcraftedEncoder
from ._hub_families import ConchEncoder, TransformersEncoder
from ._module import ModuleEncoder, is_module_key, module_class, module_key, register_module
from ._nuclei_encoder import NucleiEncoder
from ._presets import PRESETS, Preset
from ._timm import TimmEncoder, storable
from ._weights import folder_config, weights_file

#: Encoder families by the name :func:`cpnn.tl.fit` takes as ``encoder=``; other names go to timm.
ENCODERS: Registry[type[Encoder]] = Registry("encoder", "encoder")
register_encoder = ENCODERS.register

HANDCRAFTED = "handcrafted"
register_encoder(HANDCRAFTED)(HandcraftedEncoder)
NUCLEI = "nuclei"
register_encoder(NUCLEI)(NucleiEncoder)

#: The family class of each kind of preset.
FAMILIES: dict[str, type[Encoder]] = {"timm": TimmEncoder, "conch": ConchEncoder, "transformers": TransformersEncoder}
#: Settings of ``encoder_kwargs`` that cpnn itself uses (the rest go to the model's constructor).
CPNN_KWARGS = ("mean", "std", "token", "stain")


def encoder_class(name: str) -> type[Encoder]:
    """The class that builds encoder ``name``: a registered family, a preset's family, a module, else timm."""
    if is_module_key(name):
        return ModuleEncoder
    if name in ENCODERS:
        return ENCODERS.get(name)
    if name in PRESETS:
        return FAMILIES[PRESETS[name].family]
    return TimmEncoder


def default_input_px(
    name: str,
    weights: Path | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    patch_size_um: float | None = None,
) -> int:
    """The input size an encoder expects.

    ``img_size`` of its settings, else the physical scale the encoder reads at
    (:attr:`Encoder.input_um_per_px`, e.g. the nuclei encoder's 0.5 um per pixel) applied to
    ``patch_size_um``, the preset's, the local
    folder's config, timm's for the architecture, else 224.
    """
    size = (kwargs or {}).get("img_size")
    if size is not None:
        return int(size if isinstance(size, int) else list(size)[-1])
    scale = ENCODERS.get(name).input_um_per_px if name in ENCODERS else None
    if scale and patch_size_um:
        return max(16, round(patch_size_um / scale))
    if name in PRESETS:
        return PRESETS[name].input_px
    if weights is not None and weights.is_dir():
        size = folder_config(weights).get("pretrained_cfg", {}).get("input_size")
        if size:
            return int(size[-1])
    if name in ENCODERS or is_module_key(name) or name.startswith(("hf-hub:", "hf_hub:")):
        return 224
    try:
        import timm  # timm (and torchvision) load on first use, not at import

        return int(timm.models.get_pretrained_cfg(name).input_size[-1])
    except (RuntimeError, AttributeError, KeyError):
        return 224


@dataclass(frozen=True)
class EncoderOptions(Options):
    """Where an encoder's weights come from and what patch it reads (``fit(encoder_kwargs=)`` takes these by name).

    :meth:`spec` resolves them, with the encoder and its constructor settings, into the one
    encoder spec whose identity keys the embedding cache.
    """

    encoder_weights: str | Path | None = option(
        None,
        "Local checkpoint of the encoder (safetensors, ``pytorch_model.bin``, a state dict, or a downloaded hub "
        "folder with ``config.json``), loaded strictly.",
    )
    pretrained: bool = option(False, "Use the hub's pretrained weights (networked machines); a preset name implies it.")
    patch_size_um: float = option(112.0, "Side of the patch around each spot, in micrometres.", low=0.0, strict=True)
    patch_px: int | None = option(
        None, "Encoder input size in pixels (default: the encoder's own, e.g. 224 for UNI, 448 for CONCH)."
    )

    def spec(self, encoder: Any, *, seed: int, kwargs: Mapping[str, Any] | None = None) -> dict:
        """The encoder spec of ``encoder`` with these options (:func:`encoder_config`)."""
        return encoder_config(
            encoder,
            weights=self.encoder_weights,
            pretrained=self.pretrained,
            seed=seed,
            patch_size_um=self.patch_size_um,
            patch_px=self.patch_px,
            kwargs=kwargs,
        )


def encoder_config(
    encoder: Any,
    *,
    weights: str | Path | None,
    pretrained: bool,
    seed: int,
    patch_size_um: float,
    patch_px: int | None,
    kwargs: Mapping[str, Any] | None = None,
) -> dict:
    """The settings that determine an embedding; equal configs give equal embeddings.

    A local ``weights`` file is recorded by path and SHA-256, so that a model saved without the
    encoder's weights can re-attach exactly that file. A preset name implies its pretrained weights.
    ``encoder`` may be an ``nn.Module`` or callable: it is recorded by class and a digest of its weights.
    """
    path = None if weights is None else Path(weights).resolve()
    if path is not None and not path.exists():
        raise CpnnError(f"encoder_weights={str(weights)!r} is not a file; pass the path of a local checkpoint.")
    kwargs = dict(kwargs or {})
    own = {k: kwargs.pop(k) for k in CPNN_KWARGS if k in kwargs}
    name = encoder if isinstance(encoder, str) else module_key(encoder)
    if not isinstance(encoder, str) and not callable(encoder):
        raise CpnnError(f"encoder must be a name, an nn.Module or a callable, got {type(encoder).__name__}.")
    if patch_px is None:
        patch_px = default_input_px(name, path, kwargs, patch_size_um=patch_size_um)
    pretrained = bool(pretrained or weights is not None or name in PRESETS)
    config = {
        "encoder": name,
        "weights": "" if path is None else str(path),
        "weights_sha256": "" if path is None else file_digest(weights_file(path)),
        "pretrained": pretrained,
        "seed": int(seed) if encoder_class(name).seeded and not pretrained else 0,
        "patch_size_um": float(patch_size_um),
        "patch_px": int(patch_px),
    }
    version = encoder_class(name).feature_version
    if version is not None:
        config["feature_version"] = int(version)
    for key in ("mean", "std"):
        if key in own:
            values = [float(v) for v in own[key]]
            if len(values) != 3:
                raise CpnnError(f"encoder_kwargs[{key!r}] must hold three values (R, G, B), got {own[key]!r}.")
            config[key] = values
    if "token" in own:
        config["token"] = str(own["token"])
    if own.get("stain") is not None:
        config["stain"] = stain_config(own["stain"])
    if kwargs:
        config["kwargs"] = storable(kwargs)
    return config


def same_embedding(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two encoder configs give the same embeddings.

    The seed counts only for an encoder initialised at random (files written before the seed was
    normalised may record one for pretrained or weight-free encoders).
    """
    if a is None or b is None:
        return False

    def identity(c: Mapping[str, Any]) -> dict:
        c = dict(c)
        try:
            seeded = encoder_class(c.get("encoder", "")).seeded
        except Exception:  # an unknown family: compare as recorded
            seeded = True
        if not seeded or c.get("pretrained"):
            c["seed"] = 0
        return c

    return identity(a) == identity(b)


_digests: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a weights file, computed once per process for an unchanged file."""
    path = weights_file(Path(path))
    key = (str(path), *stat_key(path))
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]


def build_encoder(config: Mapping[str, Any]) -> Encoder:
    """Create the encoder of ``config``; random initialisation is seeded, so it is reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        return encoder_class(config["encoder"]).from_config(config)


@renamed_arguments({"weights": "encoder_weights"}, since="0.3", removed_in="0.4")
def make_encoder(name: str, *, pretrained: bool = False, encoder_weights: str | Path | None = None) -> Encoder:
    """Build the encoder ``name`` (unseeded): a registered family, a preset or any timm architecture."""
    return encoder_class(name).from_config(
        {"encoder": name, "pretrained": pretrained, "weights": encoder_weights, "patch_px": None}
    )


__all__ = [
    "ENCODERS",
    "HANDCRAFTED",
    "NUCLEI",
    "PRESETS",
    "ConchEncoder",
    "Encoder",
    "EncoderOptions",
    "HandcraftedEncoder",
    "ModuleEncoder",
    "NucleiEncoder",
    "Preset",
    "TimmEncoder",
    "TransformersEncoder",
    "Uint8Input",
    "build_encoder",
    "default_input_px",
    "encoder_class",
    "encoder_config",
    "file_digest",
    "is_module_key",
    "make_encoder",
    "module_class",
    "module_key",
    "register_encoder",
    "register_module",
    "same_embedding",
]
