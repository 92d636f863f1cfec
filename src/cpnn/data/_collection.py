"""Collections of samples: many SpatialData objects (or zarr stores), never concatenated in memory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from anndata import AnnData

from .._core import get_table, is_spatialdata, zarr_write_settings
from .._errors import CpnnError


def is_collection(data: Any) -> bool:
    """Whether ``data`` names several samples: a mapping of SpatialData / zarr paths, or a list of paths."""
    if isinstance(data, Collection):
        return True
    if isinstance(data, Mapping):
        return len(data) > 0 and all(is_spatialdata(v) or isinstance(v, str | Path) for v in data.values())
    if isinstance(data, list | tuple):
        return len(data) > 0 and all(isinstance(v, str | Path) for v in data)
    return False


class Collection:
    """Samples, each with its own SpatialData (table, images, results), opened one at a time.

    Parameters
    ----------
    samples
        ``{name: SpatialData or zarr path}``, or a list of zarr paths (named by their stem).
    table_key
        Key of each sample's table.

    Notes
    -----
    A sample given as a path is read when it is needed and released afterwards, so memory does
    not grow with the number of samples; results written to it go back into its store
    (:meth:`save_table`). A sample given as a SpatialData stays the caller's object.
    """

    def __init__(self, samples: Mapping[str, Any] | Sequence[str | Path], *, table_key: str = "table") -> None:
        if isinstance(samples, Collection):
            samples = samples.sources
        if isinstance(samples, Mapping):
            sources = {str(k): v for k, v in samples.items()}
        else:
            sources = {Path(p).stem: p for p in samples}
            if len(sources) != len(samples):
                raise CpnnError("The zarr paths of the collection share a name (their stems); pass a dict instead.")
        if not sources:
            raise CpnnError("The collection is empty; pass {sample: SpatialData or zarr path} or a list of paths.")
        seen: dict[Any, str] = {}
        for name, value in sources.items():
            if not (is_spatialdata(value) or isinstance(value, str | Path)):
                raise CpnnError(f"samples[{name!r}] must be a SpatialData or a zarr path, got {type(value).__name__}.")
            if isinstance(value, str | Path) and not Path(value).exists():
                raise CpnnError(f"samples[{name!r}] = {str(value)!r} does not exist.")
            ident = Path(value).resolve() if isinstance(value, str | Path) else id(value)
            if ident in seen:
                raise CpnnError(
                    f"samples[{name!r}] and samples[{seen[ident]!r}] are the same "
                    f"{'store' if isinstance(value, str | Path) else 'SpatialData object'}: each sample would be "
                    "trained on twice; pass each sample once."
                )
            seen[ident] = name
        self.sources = sources
        self.table_key = table_key

    @property
    def names(self) -> list[str]:
        """The sample names, in order."""
        return list(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self) -> Iterator[str]:
        return iter(self.sources)

    def is_stored(self, name: str) -> bool:
        """Whether sample ``name`` is a zarr store (read on demand) rather than an in-memory object."""
        return not is_spatialdata(self.sources[name])

    def open(self, name: str) -> Any:
        """The SpatialData of sample ``name`` (read from its store when given as a path)."""
        if name not in self.sources:
            raise CpnnError(f"{name!r} is not a sample of the collection; samples are {self.names[:10]}.")
        value = self.sources[name]
        if is_spatialdata(value):
            return value
        import spatialdata as sd

        try:
            return sd.read_zarr(Path(value))
        except Exception as err:
            raise CpnnError(f"Sample {name!r}: {str(value)!r} cannot be read as a SpatialData store ({err}).") from err

    def table(self, sdata: Any) -> AnnData:
        """The annotated table of an opened sample."""
        return get_table(sdata, self.table_key)

    def save_table(self, name: str, sdata: Any) -> None:
        """Write an updated table back to the sample's store (in-memory samples are already updated).

        spatialdata refuses to overwrite an element of the store it reads from, so the old table's
        folder is first moved aside (one rename); the new table is written, then the old folder
        deleted. If the write fails (disk full, interrupted), the partial table is removed and the
        old one moved back: the store reads back exactly as before.
        """
        if not self.is_stored(name):
            return
        folder = Path(self.sources[name]) / "tables" / self.table_key
        backup = folder.with_name(f".{self.table_key}.cpnn-previous")
        if backup.exists():  # a process killed mid-swap: its old table is the good copy
            if folder.exists():
                shutil.rmtree(backup)
            else:
                os.replace(backup, folder)
        moved = folder.exists()
        if moved:
            os.replace(folder, backup)
        try:
            with zarr_write_settings():
                sdata.write_element(self.table_key)
        except BaseException as err:
            shutil.rmtree(folder, ignore_errors=True)
            if moved:
                os.replace(backup, folder)
            if not isinstance(err, Exception):
                raise
            raise CpnnError(
                f"Writing the table of sample {name!r} back to {str(self.sources[name])!r} failed ({err}); the store "
                "still holds its previous table, unchanged. Free space (or fix the cause) and predict again."
            ) from err
        shutil.rmtree(backup, ignore_errors=True)
