"""Package-wide settings: compute device, data and cache folders, verbosity."""

from __future__ import annotations

import os
from pathlib import Path

import pooch
import scanpy as sc
import torch

from ._errors import CpnnError


def _seconds(value: object, name: str) -> float:
    """A positive, finite number of seconds, or an error naming where the bad value came from."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (seconds > 0 and seconds < float("inf")) or isinstance(value, bool):
        raise CpnnError(f"{name} = {value!r} is not a number of seconds above 0; give one, e.g. 600.")
    return seconds


def _threads(value: object, name: str) -> int | None:
    """``None``, ``-1`` or a positive whole number of threads, or an error naming where the bad value came from."""
    if value is None:
        return None
    try:
        n = int(value)  # type: ignore[call-overload]
        ok = not isinstance(value, bool | float) and (n == -1 or n >= 1)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CpnnError(
            f"{name} = {value!r}: use None (unset) for the idle cores, a positive number of threads, or -1 for every core."
        )
    return n


class CpnnSettings:
    """Settings of cpnn, reachable as ``cp.settings``.

    Attributes are read at call time, so changing one affects every later call.

    Attributes
    ----------
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``: the default of every ``device=``.
    num_workers
        DataLoader workers reading patches (default 0: the main process).
    progress_bar
        Show progress bars (embedding, training with loss and validation Spearman, prototypes,
        deconvolution, tiling, downloads), whatever the verbosity. On by default;
        ``CPNN_PROGRESS_BAR=0`` turns it off.
    dist_timeout_s
        Seconds a process launched with several (``WORLD_SIZE`` > 1) waits for the others to join
        before failing with a message (default 600; ``CPNN_DIST_TIMEOUT`` sets it).
    n_jobs
        CPU threads of cpnn's own work (training, embedding, deconvolution, prediction): ``None``
        (default) for the cores idle when a call starts, at least one, so that a fit beside other
        busy processes is not slowed 10-40x by threads waiting for each other; a positive number to
        fix it; ``-1`` for every core (torch's default). ``CPNN_N_JOBS`` sets it. The caller's
        torch setting is restored after each call.
    lock_timeout_s
        Seconds a write-back into a zarr store waits for another process writing the same store
        before failing with a message naming it (default 600; ``CPNN_LOCK_TIMEOUT`` sets it).
    """

    def __init__(self) -> None:
        self._datadir: Path | None = None
        self._cachedir: Path | None = None
        self.device: str = "auto"
        self.num_workers: int = 0
        self.progress_bar: bool = os.environ.get("CPNN_PROGRESS_BAR", "1") not in ("0", "false", "False")
        self._deterministic = False
        self._dist_timeout_s: float | None = None
        self._n_jobs: int | str | None = "environment"  # read (and checked) from CPNN_N_JOBS where it is used
        self._lock_timeout_s: float | None = None

    @property
    def n_jobs(self) -> int | None:
        """CPU threads of cpnn's work: ``None`` for the idle cores, a positive number, or ``-1`` for every core."""
        if self._n_jobs == "environment":
            return _threads(os.environ.get("CPNN_N_JOBS") or None, "the environment variable CPNN_N_JOBS")
        return self._n_jobs  # type: ignore[return-value]

    @n_jobs.setter
    def n_jobs(self, value: int | str | None) -> None:
        self._n_jobs = _threads(value, "cp.settings.n_jobs")

    @property
    def dist_timeout_s(self) -> float:
        """Seconds to wait for the other processes of a launch (``CPNN_DIST_TIMEOUT``; default 600)."""
        if self._dist_timeout_s is not None:
            return self._dist_timeout_s
        return _seconds(os.environ.get("CPNN_DIST_TIMEOUT", "600"), "the environment variable CPNN_DIST_TIMEOUT")

    @dist_timeout_s.setter
    def dist_timeout_s(self, value: float) -> None:
        self._dist_timeout_s = _seconds(value, "cp.settings.dist_timeout_s")

    @property
    def lock_timeout_s(self) -> float:
        """Seconds a write-back waits for another writer of the same store (``CPNN_LOCK_TIMEOUT``; default 600)."""
        if self._lock_timeout_s is not None:
            return self._lock_timeout_s
        return _seconds(os.environ.get("CPNN_LOCK_TIMEOUT", "600"), "the environment variable CPNN_LOCK_TIMEOUT")

    @lock_timeout_s.setter
    def lock_timeout_s(self, value: float) -> None:
        self._lock_timeout_s = _seconds(value, "cp.settings.lock_timeout_s")

    @property
    def datadir(self) -> Path:
        """Folder holding the downloaded public files (may be read-only).

        ``CPNN_DATA_DIR`` when set, else pooch's OS cache folder for cpnn.
        """
        if self._datadir is not None:
            return self._datadir
        env = os.environ.get("CPNN_DATA_DIR")
        return Path(env) if env else Path(pooch.os_cache("cpnn")) / "data"

    @datadir.setter
    def datadir(self, value: str | os.PathLike | None) -> None:
        self._datadir = None if value is None else Path(value)

    @property
    def cachedir(self) -> Path:
        """Writable folder for files cpnn derives (zarr image stores, downloads when `datadir` is read-only).

        ``CPNN_CACHE_DIR`` when set, else pooch's OS cache folder for cpnn.
        """
        if self._cachedir is not None:
            return self._cachedir
        env = os.environ.get("CPNN_CACHE_DIR")
        return Path(env) if env else Path(pooch.os_cache("cpnn")) / "cache"

    @cachedir.setter
    def cachedir(self, value: str | os.PathLike | None) -> None:
        self._cachedir = None if value is None else Path(value)

    @property
    def verbosity(self) -> int:
        """Verbosity of cpnn's log messages; shared with scanpy (0 errors .. 4 debug)."""
        return int(sc.settings.verbosity)

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        sc.settings.verbosity = value

    @property
    def deterministic(self) -> bool:
        """Whether torch runs deterministic algorithms only (``torch.use_deterministic_algorithms``).

        With it (and the same seed, data, device, thread count and library versions) a fit is
        bit-identical run after run on one machine; across machines, CPU types, BLAS builds and
        GPUs float rounding can still differ. Setting it also fixes cuBLAS's workspace so CUDA
        matrix products are repeatable, and the number of CPU threads (``n_jobs=None`` then means
        every core, not the cores idle at the time).
        """
        return self._deterministic

    @deterministic.setter
    def deterministic(self, value: bool) -> None:
        value = bool(value)
        if value:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(value)
        self._deterministic = value

    def resolve_device(self, device: str | None = None) -> str:
        """Return the torch device to use: ``"cuda"`` when available and asked for by ``"auto"``."""
        device = self.device if device is None else device
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise CpnnError(f"device={device!r} was asked for, but CUDA is not available; use 'cpu' or 'auto'.")
        return device

    def __repr__(self) -> str:
        return (
            f"CpnnSettings(device={self.device!r}, datadir='{self.datadir}', "
            f"cachedir='{self.cachedir}', verbosity={self.verbosity}, num_workers={self.num_workers}, "
            f"progress_bar={self.progress_bar}, deterministic={self.deterministic}, "
            f"n_jobs={os.environ.get('CPNN_N_JOBS') if self._n_jobs == 'environment' else self._n_jobs!r})"
        )


settings = CpnnSettings()
