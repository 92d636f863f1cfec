"""cpnn: gene expression from H&E images by way of cell types (CPNN, Nishimura et al., CVPR 2026)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, io, models, pl, pp, tl
from ._errors import CpnnError, DataFileError
from ._settings import settings
from .tl import CPNN

try:
    __version__ = version("cpnn")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "CPNN",
    "CpnnError",
    "DataFileError",
    "__version__",
    "datasets",
    "io",
    "models",
    "pl",
    "pp",
    "settings",
    "tl",
]
