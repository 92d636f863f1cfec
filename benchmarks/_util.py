"""Helpers for the benchmark scripts: timing and peak memory of a call, tables, resumable runs."""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil


class Peak:
    """Peak resident memory (MiB) over a block, sampled every 20 ms, and its wall time."""

    def __enter__(self):
        self._proc = psutil.Process()
        self.start_rss = self._proc.memory_info().rss / 2**20
        self.peak = self.start_rss
        self._stop = False
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        self.t0 = time.perf_counter()
        return self

    def _watch(self):
        while not self._stop:
            self.peak = max(self.peak, self._proc.memory_info().rss / 2**20)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss / 2**20)
        self.added = self.peak - self.start_rss
        return False


def max_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(rows: list[dict]) -> str:
    """Markdown table of ``rows``."""
    cols = list(dict.fromkeys(c for r in rows for c in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.get(c, "-") for c in cols]
        out.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in cells) + " |")
    return "\n".join(out)


def mean_sd(values, digits: int = 3) -> str:
    """``"mean +- sd"`` (population sd, NaN skipped as pandas does) of ``values``, ``digits`` decimals each."""
    v = np.asarray(values, dtype=float)
    return f"{np.nanmean(v):.{digits}f} +- {np.nanstd(v):.{digits}f}"


def previous_runs(csv: Path, *, resume: bool, key: tuple[str, ...]) -> tuple[list[dict], set[tuple]]:
    """The rows of a resumable benchmark's ``csv`` (none unless ``resume``) and their ``key`` tuples (seed as int)."""
    rows = pd.read_csv(csv).to_dict("records") if resume and csv.exists() else []
    return rows, {tuple(int(r[k]) if k == "seed" else r[k] for k in key) for r in rows}


def resumable_run(out: str | Path, *, resume: bool, key: tuple[str, ...]) -> tuple[Path, Path, list[dict], set[tuple]]:
    """A resumable benchmark's start: the folder ``out`` made, cpnn quiet (no log lines, no progress bars), and
    the rows of ``out/runs.csv`` with their ``key`` tuples (:func:`previous_runs`)."""
    import cpnn as cp

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    csv = out / "runs.csv"
    return (out, csv, *previous_runs(csv, resume=resume, key=key))
