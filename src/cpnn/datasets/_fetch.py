"""Fetching the public data files: a present, hash-checked copy first, pooch for what is missing."""

from __future__ import annotations

import os
from functools import cache
from importlib import resources
from pathlib import Path

import pooch
from scanpy import logging as logg

from .._core import sha256_file, stat_key
from .._errors import DataFileError
from .._settings import settings

__all__ = ["fetch", "registry"]

_verified: dict[tuple[str, int, int], str] = {}


@cache
def registry() -> dict[str, tuple[str, str]]:
    """Map each known data file (path under the data dir) to its ``(sha256, url)``."""
    text = resources.files(__package__).joinpath("registry.txt").read_text()
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            path, sha, url = line.split()
            out[path] = (sha, url)
    return out


def _sha256(path: Path) -> str:
    """SHA-256 of a data file, computed once per process while :func:`cpnn._core.stat_key` is unchanged."""
    key = (str(path), *stat_key(path))
    if key not in _verified:
        _verified[key] = sha256_file(path)
    return _verified[key]


def _check(path: Path, sha: str) -> Path:
    found = _sha256(path)
    if found != sha:
        raise DataFileError(
            f"The data file '{path}' is corrupt or truncated: its SHA-256 is {found}, expected {sha}. "
            "Delete it so that cpnn downloads it again, or restore the original file."
        )
    return path


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def fetch(path: str) -> Path:
    """Return a local, hash-verified copy of a registered data file.

    Looks in ``cp.settings.datadir`` (which may be read-only, e.g. a shared folder), then in
    the ``downloads`` folder of ``cp.settings.cachedir``; downloads with pooch only what is missing,
    into the data dir when it is writable, else into the cache dir.

    Parameters
    ----------
    path
        The file's path under the data dir, as listed in the registry.

    Returns
    -------
    The local path of the verified file.
    """
    reg = registry()
    if path not in reg:
        raise KeyError(f"{path!r} is not a registered cpnn data file.")
    sha, url = reg[path]
    fallback = settings.cachedir / "downloads"
    for root in (settings.datadir, fallback):
        candidate = root / path
        if candidate.is_file():
            return _check(candidate, sha)
    root = settings.datadir if _writable(settings.datadir) else fallback
    target = root / path
    logg.info(f"downloading {url} to {target.parent}")
    try:
        local = pooch.retrieve(
            url, known_hash=f"sha256:{sha}", fname=target.name, path=target.parent, progressbar=settings.progress_bar
        )
    except Exception as e:  # network errors, hash mismatch of the download
        raise DataFileError(
            f"Could not fetch the data file '{path}' from {url} into {target.parent}: {e}. "
            "On an offline machine, set CPNN_DATA_DIR (or cp.settings.datadir) to a folder that holds it."
        ) from e
    return Path(local)
