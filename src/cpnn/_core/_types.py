"""The types of cpnn's public signatures that are longer than a union, written once.

They are strings: nothing heavy is imported at run time; type checkers resolve them through the
imports below, which run only for them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    import numpy as np
    import pandas as pd
    from spatialdata import SpatialData

#: One sample of a collection: a zarr store's path, or a SpatialData in memory.
Sample: TypeAlias = "str | os.PathLike[str] | SpatialData"
#: A collection of samples, listed (zarr paths) or named (``{name: SpatialData or path}``).
Samples: TypeAlias = "Sequence[str | os.PathLike[str]] | Mapping[str, Sample]"
#: Rows of a table: a boolean mask, positions, obs names, region or section names, or ``(column, values)``.
Rows: TypeAlias = "np.ndarray | pd.Series | Sequence[int] | Sequence[str] | str | tuple[str, object] | None"

__all__ = ["Rows", "Sample", "Samples"]
