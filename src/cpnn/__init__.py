"""cpnn: gene expression from H&E images by way of cell types (CPNN, Nishimura et al., CVPR 2026).

The sub-packages (and with them torch, scanpy and spatialdata) load on first use, so that
``import cpnn`` stays cheap: ``cp.pp``, ``cp.tl``, ``cp.pl``... are imported when first touched.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from ._errors import CpnnError, DataFileError

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import datasets, io, models, pl, pp, tl
    from ._settings import settings
    from .tl import CPNN

try:
    __version__ = version("cpnn")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_SUBPACKAGES = ("datasets", "io", "models", "pl", "pp", "tl")

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


def __getattr__(name: str) -> Any:
    """Load a sub-package (or ``settings``, ``CPNN``) on first access."""
    if name in _SUBPACKAGES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    if name == "settings":
        from ._settings import settings

        globals()["settings"] = settings
        return settings
    if name == "CPNN":
        from .tl import CPNN

        globals()["CPNN"] = CPNN
        return CPNN
    raise AttributeError(f"module 'cpnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
