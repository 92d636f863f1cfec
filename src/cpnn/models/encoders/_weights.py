"""Local encoder checkpoints, in the forms users meet, loaded strictly.

A file (safetensors, or a ``torch.save`` state dict read with ``weights_only=True``, possibly wrapped
in ``{"state_dict": ...}`` / ``{"model": ...}`` or with a ``module.`` / ``model.`` prefix) or a
hub-style folder (``config.json`` with ``architecture``, ``model_args`` and ``pretrained_cfg``,
next to ``model.safetensors`` or ``pytorch_model.bin``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..._errors import CpnnError

#: Weight files looked for in a hub-style folder, in order.
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin", "pytorch_model.pth")
#: Wrappers of a state dict in training checkpoints.
WRAPPERS = ("state_dict", "model", "teacher", "student", "module", "network")
#: Prefixes stripped when the model's own names do not carry them.
PREFIXES = ("module.", "model.", "backbone.", "encoder.", "trunk.", "visual.trunk.")
#: Classifier parameters a feature extractor does not have (dropped, never counted as unexpected).
CLASSIFIER = ("head.weight", "head.bias", "fc.weight", "fc.bias", "classifier.weight", "classifier.bias")


def folder_config(path: Path) -> dict:
    """The ``config.json`` of a hub-style folder (empty when there is none)."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError) as err:
        raise CpnnError(f"encoder_weights={str(path)!r}: its config.json is not valid JSON ({err}).") from err


def weights_file(path: Path) -> Path:
    """The weights file of ``path`` (itself, or the weights inside a hub-style folder)."""
    if path.is_file():
        return path
    if path.is_dir():
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
        if len(found) == 1:
            return path / found[0]
        raise CpnnError(
            f"encoder_weights={str(path)!r} is a folder without one weights file ({', '.join(FOLDER_FILES)} or a single "
            f"*.safetensors/*.bin/*.pth); found {found or 'none'}."
        )
    raise CpnnError(f"encoder_weights={str(path)!r} is not a file or folder; pass the path of a local checkpoint.")


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped; no code from the file is executed."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same advice
        raise CpnnError(
            f"encoder_weights={str(path)!r} cannot be read as a checkpoint ({str(err).splitlines()[0]}); "
            "pass a safetensors file or a state dict saved with torch.save."
        ) from err
    for _ in range(3):
        if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            inner = next((state[k] for k in WRAPPERS if isinstance(state.get(k), dict)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CpnnError(f"encoder_weights={str(path)!r} holds no state dict of tensors.")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _best_prefix(state: dict[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    """The state with the prefix removed that makes most of its names the model's own."""
    best, hits = state, len(names & set(state))
    for prefix in PREFIXES:
        stripped = {k.removeprefix(prefix): v for k, v in state.items()}
        n = len(names & set(stripped))
        if n > hits:
            best, hits = stripped, n
    return best


def load_strict(model: nn.Module, path: Path, *, name: str) -> None:
    """Load ``path`` into ``model``: every parameter and buffer must be there, with its shape; nothing else.

    A classifier the feature extractor does not have is dropped; anything else missing or
    unexpected is an error naming a few keys (a checkpoint of another architecture never
    "loads" with random weights left behind).
    """
    target = model.state_dict()
    names = set(target)
    state = _best_prefix(read_state(weights_file(path)), names)
    state = {k: v for k, v in state.items() if not (k in CLASSIFIER or k.startswith("head.fc.")) or k in names}
    missing = sorted(names - set(state))
    unexpected = sorted(set(state) - names)
    wrong = sorted(k for k in names & set(state) if tuple(state[k].shape) != tuple(target[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's {len(names)} tensors are not in the file (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors of the file are not in the model (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} have another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                f"{tuple(target[k].shape)} in the model)"
            )
        raise CpnnError(
            f"encoder_weights={str(path)!r} does not fit encoder={name!r}: {'; '.join(parts)}. Is it a checkpoint of another "
            "architecture? Name the model it belongs to (e.g. encoder='uni'), or pass its constructor settings in "
            "encoder_kwargs= (init_values=, reg_tokens=, mlp_layer=...)."
        )
    model.load_state_dict(state, strict=True)
