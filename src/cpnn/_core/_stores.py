"""Zarr stores cpnn writes results back into: one writer at a time, and a table swapped, never absent.

**The lock.** Every write-back holds an exclusive ``fcntl.flock`` on ``<store>/.cpnn.lock``, and
cpnn's own reads of a store hold a shared one (on a store some cpnn writer has written; a read
never creates the file), so two writers serialise (the second waits, then
reads the table the first wrote) and a cpnn reader never sees a table half-way through a swap. The
kernel releases the lock when its process dies (``kill -9`` included), so a lock is never stale;
the holder (process, host, what it does, since when) is written into the lock file and named when
a writer gives up waiting after ``cp.settings.lock_timeout_s``.

**The swap.** The new table is written completely into ``<store>/.cpnn-staging/<id>/`` (a folder
spatialdata never reads), then exchanged with ``tables/<key>`` in one atomic
``renameat2(RENAME_EXCHANGE)`` system call (Linux >= 3.15): at every moment the store holds a
complete table, the old one or the new one. Where the exchange is not available (other systems,
some file systems) two renames take its place, and a store killed between them is repaired by
the next cpnn call. Leftovers of a killed write (a staging folder, or the previous scheme's
``tables/.<key>.cpnn-previous`` backup) are cleared by the next cpnn call on the store, which
says what it did.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._errors import CpnnError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, the swap still applies
    fcntl = None  # type: ignore[assignment]

#: Lock file in the store's root folder.
LOCK = ".cpnn.lock"
#: Folder in the store's root where a new table is written before it is swapped in.
STAGING = ".cpnn-staging"

_held: dict[str, list] = {}  # resolved store path -> [file object, exclusive, depth]
_guard = threading.Lock()


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    if not info:
        return "another process (a reader)"
    since = time.strftime("%H:%M:%S", time.localtime(float(info.get("since", 0))))
    return f"process {info.get('pid')} on {info.get('host')} ({info.get('what')}, since {since})"


@contextmanager
def store_lock(
    store: str | os.PathLike, *, exclusive: bool, what: str, timeout_s: float | None = None
) -> Iterator[None]:
    """Hold the store's lock: ``exclusive`` for a write-back, shared for a read.

    Re-entrant within a process (a read inside a write-back of the same store holds nothing more).
    Waits at most ``timeout_s`` (default ``cp.settings.lock_timeout_s``), logging who holds it, then
    raises :class:`~cpnn.CpnnError` naming the holder.
    """
    from .._settings import settings

    root = Path(store)
    key = str(root.resolve())
    with _guard:
        held = _held.get(key)
        if held is not None and (held[1] or not exclusive):
            held[2] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _guard:
                _held[key][2] -= 1
        return
    if held is not None:
        raise CpnnError(f"{what}: this process reads {str(root)!r} and cannot write it inside that read.")
    if fcntl is None:  # pragma: no cover
        yield
        return
    timeout = settings.lock_timeout_s if timeout_s is None else float(timeout_s)
    path = root / LOCK
    try:  # a reader never creates the file: reading leaves the store as it was
        f = open(path, "a+") if exclusive else open(path)
    except OSError as err:
        if exclusive:
            raise CpnnError(
                f"{what}: cannot create the lock file {str(path)!r} ({err}); is the store writable?"
            ) from err
        yield  # a read-only store, or one no cpnn writer has written: nothing to wait for
        return
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    start = time.monotonic()
    told = False
    try:
        while True:
            try:
                fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= timeout:
                    raise CpnnError(
                        f"{what}: {str(root)!r} is locked by {_holder(path)} and stayed locked for {timeout:g} s. "
                        "Wait for it to finish, or raise cp.settings.lock_timeout_s (CPNN_LOCK_TIMEOUT). A process that "
                        "died releases its lock by itself."
                    ) from None
                if not told:
                    from scanpy import logging as logg

                    logg.warning(f"{what}: waiting for {_holder(path)}, which holds {str(root)!r}")
                    told = True
                time.sleep(0.05)
        if exclusive:
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": time.time()}))
            f.flush()
        with _guard:
            _held[key] = [f, exclusive, 1]
        try:
            yield
        finally:
            with _guard:
                _held.pop(key, None)
            if exclusive:
                f.seek(0)
                f.truncate()
                f.flush()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def repair_store(store: str | os.PathLike, table_key: str = "table") -> list[str]:
    """Clear what a killed write-back left in ``store``; returns what was done (empty when nothing).

    A staging folder is discarded (the table in place is complete: the old one before the swap, the
    new one after it). Without a table in place (two-rename fallback killed between its renames,
    or the previous scheme) the kept previous table is put back.
    """
    root = Path(store)
    staging = root / STAGING
    table = root / "tables" / table_key
    legacy = table.with_name(f".{table_key}.cpnn-previous")
    if not staging.exists() and not legacy.exists():
        return []
    done: list[str] = []
    with store_lock(root, exclusive=True, what="repairing an interrupted write-back"):
        if legacy.exists():  # 0.3's scheme: the backup exists until its write finished, so it is the good copy
            if table.exists():
                shutil.rmtree(table)
            os.replace(legacy, table)
            done.append(f"put back the table that an interrupted write-back had moved to {legacy.name}")
        if staging.exists():
            for entry in sorted(staging.iterdir()):
                previous = entry / "previous"
                if not table.exists() and previous.exists():
                    os.replace(previous, table)
                    done.append(f"put back the previous table kept in {entry.relative_to(root)}")
                done.append(f"removed the unfinished write-back {entry.relative_to(root)}")
            shutil.rmtree(staging, ignore_errors=True)
    if done:
        from scanpy import logging as logg

        logg.warning(f"{str(root)!r}: a write-back had been interrupted (killed); " + "; ".join(done))
    return done


def swap_table(store: str | os.PathLike, table: Any, table_key: str = "table") -> None:
    """Write ``table`` (an AnnData of a SpatialData) as ``tables/<table_key>`` of ``store``, replacing the old one.

    The caller holds the store's exclusive lock. The new table is written whole beside the store's
    elements, then exchanged with the old one in one system call; a failure before the exchange
    leaves the store exactly as it was. Consolidated metadata, where the store has it, is
    rewritten afterwards (spatialdata reads the table's files, not that copy of their metadata).
    """
    import spatialdata as sd

    from ._files import zarr_write_settings

    root = Path(store)
    target = root / "tables" / table_key
    entry = root / STAGING / uuid.uuid4().hex
    entry.mkdir(parents=True)
    try:
        scratch = entry / "new.zarr"
        with zarr_write_settings(), warnings.catch_warnings():
            # the table annotates the store's shapes, which this scratch SpatialData does not hold
            warnings.filterwarnings("ignore", message="The table is annotating", category=UserWarning)
            sd.SpatialData(tables={table_key: table}).write(scratch, consolidate_metadata=False)
        new = scratch / "tables" / table_key
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(new, target)
        elif not _exchange(new, target):
            os.replace(target, entry / "previous")  # the two-rename fallback; repair_store puts it back if killed here
            os.replace(new, target)
    finally:
        shutil.rmtree(entry, ignore_errors=True)
        try:
            (root / STAGING).rmdir()
        except OSError:
            pass
    sdata_root = sd.SpatialData()
    sdata_root.path = root
    if sdata_root.has_consolidated_metadata():
        sdata_root.write_consolidated_metadata()
