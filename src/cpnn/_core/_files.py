"""Files cpnn derives: written atomically, and folders sealed with a manifest that is checked on open."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

#: Name of the manifest inside a sealed folder (written last).
MANIFEST = "cpnn_manifest.json"

_verified: dict[str, tuple] = {}


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: a killed process leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporary files an interrupted :func:`save_atomic` of ``path`` left behind; returns them."""
    gone = []
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            try:
                tmp.unlink()
                gone.append(tmp)
            except OSError:
                pass
    return gone


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stat_key(path: Path) -> tuple[int, ...]:
    """What must stay the same for a file's hash, computed earlier in this process, to be reused.

    Size, modification time, inode and status-change time (``st_ctime_ns``): writing into a file
    moves its ``ctime``, and ``os.utime`` cannot set it back, so a file edited in place with its
    size and modification time restored is hashed again, as a new process would.
    """
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    """Seal ``folder``: record every file's size and SHA-256 in a manifest written last."""
    entries = {str(p.relative_to(folder)): [p.stat().st_size, sha256_file(p)] for p in _files(folder)}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": entries}))
    os.replace(tmp, folder / MANIFEST)


def check_manifest(folder: Path) -> str:
    """Why ``folder`` does not match its manifest (empty when it does): missing, extra, resized or changed files.

    Hashes are computed once per process for an unchanged set of files (same names, sizes and times).
    """
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "it has no manifest (its writing did not finish)"
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    files = _files(folder)
    found = {str(p.relative_to(folder)): p for p in files}
    missing = sorted(set(entries) - set(found))
    if missing:
        return f"{len(missing)} file(s) are missing, e.g. {missing[0]}"
    extra = sorted(set(found) - set(entries))
    if extra:
        return f"{len(extra)} file(s) are not in its manifest, e.g. {extra[0]}"
    stats = tuple((name, *stat_key(p)) for name, p in sorted(found.items()))
    if _verified.get(str(folder)) == stats:
        return ""
    for name, p in sorted(found.items()):
        size, digest = entries[name]
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, {size} were written"
        if sha256_file(p) != digest:
            return f"{name} changed since it was written"
    _verified[str(folder)] = stats
    return ""


@contextmanager
def zarr_write_settings() -> Iterator[None]:
    """The zarr stores cpnn writes: automatic zarr v3 sharding off, chosen explicitly (anndata's switch).

    anndata warns once per array written while the choice is left open; cpnn's stores are small
    tables and image pyramids in 1024-px chunks, for which sharding brings nothing.
    """
    import anndata as ad

    with ad.settings.override(auto_shard_zarr_v3=False):
        yield
