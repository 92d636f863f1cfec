"""timm backbones as encoders: any architecture, any ``hf-hub:`` id, the foundation-model presets."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from scanpy import logging as logg

from ..._errors import CpnnError
from ._base import Encoder
from ._presets import PRESETS, Preset
from ._weights import folder_config, load_strict

_warned_random: set[str] = set()


def resolve_objects(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor settings with classes written as ``"module.Name"`` strings turned back into objects."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, str) and v.count(".") >= 1 and v.split(".")[0] in ("timm", "torch"):
            module, _, attr = v.rpartition(".")
            try:
                out[k] = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise CpnnError(f"encoder_kwargs[{k!r}]={v!r} names no importable class.") from err
        else:
            out[k] = v
    return out


def storable(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``encoder_kwargs`` as JSON-ready values: classes and functions as ``"module.Name"``."""
    out = {}
    for k, v in (kwargs or {}).items():
        if isinstance(v, type) or callable(v):
            out[k] = f"{v.__module__}.{v.__qualname__}"
        elif isinstance(v, tuple):
            out[k] = list(v)
        else:
            out[k] = v
    return out


def hub_error(name: str, hub: str, card: str, err: Exception) -> CpnnError:
    """A message that says what to do when a hub download fails (offline, gated, missing token)."""
    repo = hub.split(":", 1)[-1]
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CpnnError(
        f"encoder={name!r}: the weights {hub} could not be fetched ({type(err).__name__}: {first[:200]}). "
        f"Offline (HF_HUB_OFFLINE=1 or no network), download them once on a networked machine "
        f"(`hf download {repo}`) and pass encoder_weights=<that folder or its weights file>. For a gated model, accept "
        f"its terms at {card or 'https://huggingface.co/' + repo} and set HF_TOKEN."
    )


class TimmEncoder(Encoder):
    """A timm backbone with its input normalisation; input float RGB in [0, 1], NCHW.

    Parameters
    ----------
    name
        A timm architecture (``timm.list_models()``), an ``hf-hub:`` id, or a preset
        (:data:`cpnn.models.encoders.PRESETS`: ``"uni"``, ``"uni2-h"``, ``"h-optimus-0"``, ...).
    pretrained
        Load the hub weights (timm's, or the preset's hub id; networked machines).
    weights
        A local checkpoint: a file (safetensors, ``pytorch_model.bin``, a state dict saved with
        ``torch.save``, with or without a ``model.`` prefix) or a hub-style folder with
        ``config.json``. Loaded strictly: every tensor must fit.
    kwargs
        Constructor settings for ``timm.create_model`` (``init_values``, ``reg_tokens``, ``mlp_layer``...).
    mean
        Input normalisation: mean per RGB channel.
    std
        Input normalisation: standard deviation per RGB channel.
    token
        Embedding of transformer backbones: ``"cls"``, ``"mean"`` (patch tokens) or ``"cls+mean"``
        (concatenated, as Virchow's card prescribes); default the model's own pooling.
    patch_px
        Input size the patches will have; a fixed-size model of another size is refused.
    quiet
        Build the architecture without warning about random weights (stored weights follow).
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool = False,
        weights: str | Path | None = None,
        kwargs: Mapping[str, Any] | None = None,
        mean: Any = None,
        std: Any = None,
        token: str | None = None,
        patch_px: int | None = None,
        quiet: bool = False,
    ) -> None:
        import timm  # loads torchvision: on first use, not at import

        super().__init__()
        preset: Preset | None = PRESETS.get(name)
        extra = resolve_objects({**(preset.kwargs if preset else {}), **(kwargs or {})})
        data_cfg: dict = {}
        if weights is not None:
            path = Path(weights)
            folder = folder_config(path) if path.is_dir() else {}
            arch = folder.get("architecture") or (preset.architecture if preset else "")
            if not arch and name.startswith(("hf-hub:", "hf_hub:")):
                raise CpnnError(
                    f"encoder={name!r} with a local weights file needs the architecture: pass the downloaded hub "
                    "folder (with its config.json) as encoder_weights=, or a timm architecture name as encoder=."
                )
            arch = arch or name
            build = {**(preset.local if preset else {}), **folder.get("model_args", {}), **extra}
            self.backbone = self._create(name, arch, False, build)
            load_strict(self.backbone, path, name=name)
            data_cfg = folder.get("pretrained_cfg", {})
        elif pretrained:
            hub = preset.hub if preset else name
            try:
                self.backbone = timm.create_model(hub, pretrained=True, **{**extra, "num_classes": 0})
            except RuntimeError as err:
                if "Unknown model" in str(err):
                    raise CpnnError(f"encoder={name!r} is not a timm architecture (see timm.list_models()).") from err
                raise hub_error(name, hub, preset.card if preset else "", err) from err
            except Exception as err:  # network, authentication, gated repository, offline mode
                raise hub_error(name, hub, preset.card if preset else "", err) from err
        else:  # random initialisation (or the architecture only, when stored weights replace it)
            arch = preset.architecture if preset else name
            self.backbone = self._create(name, arch, False, {**(preset.local if preset else {}), **extra})
            if name not in _warned_random and not quiet:
                _warned_random.add(name)
                logg.warning(
                    f"encoder={name!r} has random weights (no pretrained=True, no encoder_weights=): its embeddings carry "
                    "little about tissue. For real use pass a pathology foundation model (encoder='uni', "
                    "encoder_weights=<local checkpoint>), or encoder='handcrafted' for fixed colour/texture features."
                )
        timm_cfg = timm.data.resolve_data_config({}, model=self.backbone)
        mean = mean if mean is not None else preset.mean if preset else data_cfg.get("mean", timm_cfg["mean"])
        std = std if std is not None else preset.std if preset else data_cfg.get("std", timm_cfg["std"])
        size = data_cfg.get("input_size", timm_cfg["input_size"])
        self.input_px = preset.input_px if preset else int(size[-1])
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        token = token if token is not None else preset.token if preset else None
        if token not in (None, "cls", "mean", "cls+mean"):
            raise CpnnError(f"token={token!r}; use 'cls', 'mean' or 'cls+mean'.")
        self.token = token
        width = int(self.backbone.num_features)
        self.out_dim = 2 * width if token == "cls+mean" else width
        self._check_size(name, patch_px)

    @staticmethod
    def _create(name: str, arch: str, pretrained: bool, kwargs: dict) -> torch.nn.Module:
        import timm

        try:
            return timm.create_model(arch, pretrained=pretrained, **{**kwargs, "num_classes": 0})
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise CpnnError(f"encoder={name!r} is not a timm architecture (see timm.list_models()).") from e
            raise
        except TypeError as e:
            raise CpnnError(f"encoder={name!r}: timm does not take these settings ({e}); check encoder_kwargs=.") from e

    def _check_size(self, name: str, patch_px: int | None) -> None:
        embed = getattr(self.backbone, "patch_embed", None)
        size = getattr(embed, "img_size", None)
        if patch_px is None or size is None or getattr(self.backbone, "dynamic_img_size", False):
            return
        if tuple(size) != (patch_px, patch_px):
            raise CpnnError(
                f"encoder={name!r} takes {tuple(size)[-1]} px inputs only, but patch_px={patch_px}; leave patch_px "
                f"unset (the encoder's own size) or pass encoder_kwargs={{'dynamic_img_size': True}}."
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TimmEncoder:
        """The backbone ``config["encoder"]`` with the configured weights, settings and token."""
        return cls(
            config["encoder"],
            pretrained=bool(config.get("pretrained")),
            weights=config.get("weights") or None,
            kwargs=config.get("kwargs") or {},
            mean=config.get("mean") or None,
            std=config.get("std") or None,
            token=config.get("token") or None,
            patch_px=config.get("patch_px"),
            quiet=bool(config.get("stored_weights")),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of patches."""
        x = (x - self.mean) / self.std
        if self.token is None:
            return self.backbone(x)
        tokens = self.backbone.forward_features(x)
        if tokens.dim() != 3:  # a CNN: its own pooling
            return self.backbone.forward_head(tokens, pre_logits=True)
        prefix = int(getattr(self.backbone, "num_prefix_tokens", 1))
        cls_token, patches = tokens[:, 0], tokens[:, prefix:]
        if self.token == "cls":
            return cls_token
        if self.token == "mean":
            return patches.mean(1)
        return torch.cat([cls_token, patches.mean(1)], dim=-1)
