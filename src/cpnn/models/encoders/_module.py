"""Any ``nn.Module`` or callable as the encoder (CONCH through its own package, in-house models...)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..._core import state_digest
from ..._errors import CpnnError
from ._base import Encoder

#: Modules passed in this process, by the key their configuration records.
_LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_CALLABLES: dict[str, Callable] = {}


def module_key(module: Any) -> str:
    """The name under which a module's configuration records it: class and weights digest (or identity)."""
    name = (
        f"{type(module).__module__}.{type(module).__qualname__}"
        if isinstance(module, nn.Module)
        else getattr(module, "__qualname__", type(module).__qualname__)
    )
    if isinstance(module, nn.Module):
        key = f"module:{name}:{state_digest(module.state_dict())[:16]}"
        _LIVE[key] = module
    else:
        key = f"module:{name}:{id(module):x}"
        _CALLABLES[key] = module
    return key


def is_module_key(name: object) -> bool:
    """Whether an encoder name is a user module's key (:func:`module_key`)."""
    return isinstance(name, str) and name.startswith("module:")


def module_class(key: str) -> str:
    """The class (qualified name) a user module's key records."""
    return key.split(":")[1]


def register_module(key: str, module: Any) -> None:
    """Make ``module`` the one a configuration recording ``key`` builds."""
    if isinstance(module, nn.Module):
        _LIVE[key] = module
    else:
        _CALLABLES[key] = module


class ModuleEncoder(Encoder):
    """Wraps a user's ``nn.Module`` or callable: float RGB in [0, 1], normalised with ``mean``/``std``, in.

    Parameters
    ----------
    module
        Takes (N, 3, px, px) float tensors and returns (N, D) embeddings (a tuple: its first item).
    mean
        Input normalisation: mean per RGB channel.
    std
        Input normalisation: standard deviation per RGB channel.
    patch_px
        Input size, used to find the embedding width with one forward pass when ``out_dim`` is not given.
    out_dim
        Embedding width.
    """

    seeded = False  # the module arrives with its weights

    def __init__(
        self, module: Any, *, mean: Any = None, std: Any = None, patch_px: int = 224, out_dim: int | None = None
    ) -> None:
        super().__init__()
        self.module = module if isinstance(module, nn.Module) else None
        self._fn = None if isinstance(module, nn.Module) else module
        self.register_buffer(
            "mean", torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0)).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std if std is not None else (1.0, 1.0, 1.0)).view(1, 3, 1, 1), persistent=False
        )
        if out_dim is None:
            with torch.no_grad():
                out_dim = int(self.forward(torch.zeros(1, 3, patch_px, patch_px)).shape[-1])
        self.out_dim = int(out_dim)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModuleEncoder:
        """The module recorded in ``config`` (it must have been passed in this process)."""
        key = config["encoder"]
        module = _LIVE.get(key) or _CALLABLES.get(key)
        if module is None:
            raise CpnnError(
                f"This model's encoder is a user module ({key.split(':')[1]}), which cannot be rebuilt from a file: "
                "pass it again, e.g. cp.CPNN.load(path, encoder=my_module)."
            )
        return cls(module, mean=config.get("mean") or None, std=config.get("std") or None, patch_px=config["patch_px"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of patches."""
        out = (self.module or self._fn)((x - self.mean) / self.std)
        if isinstance(out, tuple | list):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise CpnnError(
                f"The encoder module must return (N, D) embeddings, got {getattr(out, 'shape', type(out).__name__)}."
            )
        if out.shape[0] != x.shape[0]:
            raise CpnnError(
                f"The encoder module returned {out.shape[0]} rows for a batch of {x.shape[0]} patches; it must return "
                "one embedding per patch, (N, D)."
            )
        if not self.training and not torch.isfinite(out).all():  # (while training, a NaN is a divergence)
            bad = int((~torch.isfinite(out)).any(1).sum())
            raise CpnnError(
                f"The encoder module returned NaN or infinite embeddings for {bad} of {x.shape[0]} patches. cpnn feeds "
                "it float RGB in [0, 1] normalised with mean=/std= (encoder_kwargs); check the module's weights and "
                "the input it expects."
            )
        return out
