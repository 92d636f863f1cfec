"""Collections of samples: many SpatialData objects (or zarr stores), never concatenated in memory."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anndata import AnnData

from .._core import get_table, is_spatialdata, repair_store, store_lock, swap_table
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
        """The SpatialData of sample ``name`` (read from its store when given as a path).

        A store is first repaired if a write-back into it was killed, and read under its shared
        lock, so a write-back by another process is never seen half-way.
        """
        if name not in self.sources:
            raise CpnnError(f"{name!r} is not a sample of the collection; samples are {self.names[:10]}.")
        value = self.sources[name]
        if is_spatialdata(value):
            return value
        return read_store(value, table_key=self.table_key, name=name)

    @contextmanager
    def writing(self, name: str, what: str) -> Iterator[None]:
        """Hold sample ``name``'s store for a read-modify-write: other writers wait (nothing for in-memory samples)."""
        if not self.is_stored(name):
            yield
            return
        with store_lock(self.sources[name], exclusive=True, what=what):
            yield

    def table(self, sdata: Any) -> AnnData:
        """The annotated table of an opened sample."""
        return get_table(sdata, self.table_key)

    def save_table(self, name: str, sdata: Any) -> None:
        """Write an updated table back to the sample's store (in-memory samples are already updated).

        The new table is written whole beside the store's elements and swapped in by one atomic
        exchange (:func:`cpnn._core.swap_table`), under the store's exclusive lock: readers see
        the old or the new table at every moment, and a write that fails or is killed before the
        exchange leaves the old one in place.
        """
        if not self.is_stored(name):
            return
        store = Path(self.sources[name])
        with store_lock(store, exclusive=True, what=f"writing the table of sample {name!r}"):
            repair_store(store, self.table_key)
            try:
                swap_table(store, get_table(sdata, self.table_key), self.table_key)
            except Exception as err:
                raise CpnnError(
                    f"Writing the table of sample {name!r} back to {str(store)!r} failed ({err}); the store "
                    "still holds its previous table, unchanged. Free space (or fix the cause) and predict again."
                ) from err


def read_store(path: str | Path, *, table_key: str = "table", name: str | None = None) -> Any:
    """Read a SpatialData zarr store as cpnn does: repaired after a killed write-back, under its shared lock."""
    import spatialdata as sd

    label = f"Sample {name!r}: {str(path)!r}" if name is not None else f"{str(path)!r}"
    path = Path(path)
    try:
        repair_store(path, table_key)
        with store_lock(path, exclusive=False, what=f"reading {str(path)!r}"):
            return sd.read_zarr(path)
    except CpnnError:
        raise
    except Exception as err:
        raise CpnnError(f"{label} cannot be read as a SpatialData store ({err}).") from err
