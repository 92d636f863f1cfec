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


def experiment_args(doc: str, *, out: str, seeds: int):
    """The argument parser every experiment starts from: ``--out``, ``--seeds``, ``--resume`` (add your own)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=out, help="results folder (runs.csv, tables.md)")
    ap.add_argument("--seeds", type=int, default=seeds)
    ap.add_argument("--resume", action="store_true", help="keep the rows already in <out>, run the rest")
    return ap


class Runs:
    """One experiment's rows (folds x seeds x configurations), resumable: the runner every script calls.

    ``Runs(out, resume=..., key=("test", "config", "seed"))`` makes the folder, quiets cpnn, and
    reads ``out/runs.csv`` when resuming; :meth:`done` says whether a key has its row, :meth:`add`
    appends a row, prints its line and rewrites the CSV, so a killed run loses one row at most;
    :meth:`summary` gives the per-configuration table rows; :meth:`write` the tables file.
    """

    def __init__(self, out: str | Path, *, resume: bool, key: tuple[str, ...], name: str = "runs.csv") -> None:
        import cpnn as cp

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        cp.settings.verbosity = 0
        cp.settings.progress_bar = False
        self.csv = self.out / name
        self.key = key
        self.rows, self._done = previous_runs(self.csv, resume=resume, key=key)

    def done(self, *key) -> bool:
        """Whether the row of ``key`` (the values of :attr:`key`, in order) is already there."""
        return tuple(key) in self._done

    def add(self, row: dict, line: str) -> None:
        """Append ``row``, print ``line``, and write every row so far."""
        self.rows.append(row)
        print(line, flush=True)
        pd.DataFrame(self.rows).to_csv(self.csv, index=False)

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame."""
        return pd.DataFrame(self.rows)

    def summary(self, by: str, names, columns: dict, *, where: dict | None = None) -> list[dict]:
        """One table row per value of ``by`` in ``names`` that has rows: ``{label: fn(group)}`` of ``columns``.

        ``where``: only the rows with these values (``{"test": "B4"}``).
        """
        runs = self.frame()
        for column, value in (where or {}).items():
            runs = runs[runs[column] == value] if len(runs) else runs
        out = []
        for name in names:
            g = runs[runs[by] == name] if len(runs) else runs
            if not g.empty:
                out.append({label: fn(g) for label, fn in columns.items()})
        return out

    def write(self, text: str, name: str = "tables.md") -> None:
        """Write ``text`` to ``out/name`` and print it."""
        (self.out / name).write_text(text)
        print(text)


def fit_options(head: str = "cpnn", **flat) -> dict:
    """A benchmark configuration's flat options as ``cp.tl.fit``'s keywords, by the record that owns each.

    Options of a record the head does not have (``prototypes_key`` for the ridge head, say) are
    dropped, so one configuration serves every head compared on it; ``None`` means the preset's.
    """
    import cpnn as cp
    from cpnn.tl._config import KEYWORDS, owner  # fit's own routing of flat keywords

    own = cp.models.HEADS.get(head).Options.names()
    out: dict = {"head": head, **{k: dict(flat.pop(k)) for k in KEYWORDS.values() if flat.get(k) is not None}}
    for name, value in flat.items():
        group = owner(name)
        if value is None:  # the preset's
            continue
        if group is None:
            out[name] = value  # fit's own keywords (preset, seed, encoder, ...)
        elif group != "head" or name in own:
            out.setdefault(KEYWORDS[group], {})[name] = value
    return out


def side_scores(adata, model, genes, sides: dict, *, embedding_key: str | None = None, key: str = "sel") -> dict:
    """Mean per-gene pooled Spearman of ``model``'s prediction on each side (``{name: spot mask}``)."""
    import cpnn as cp

    kw = {} if embedding_key is None else {"embedding_key": embedding_key}
    scores = {}
    for side, mask in sides.items():
        cp.tl.predict(adata, model, regions=mask, key_added=key, **kw)
        df = cp.tl.evaluate(adata, layer=key, genes=genes, spots=mask)
        scores[side] = float(df["spearman_pooled"].mean())  # one section: pooled = per section
    return scores


def selection_row(test: str, name: str, seed: int, scores: dict, model, seconds: float, **extra) -> tuple[dict, str]:
    """A row of an experiment that chooses on the validation section (and its printed line), for :meth:`Runs.add`."""
    row = {
        "test": test, "config": name, "seed": seed, "validation_spearman": scores["validation"],
        "test_spearman": scores["test"], **extra, "epochs": len(model.history), "seconds": seconds,
    }  # fmt: skip
    line = (
        f"{test} {name} seed {seed}: validation {scores['validation']:.3f}, test {scores['test']:.3f}, "
        f"{len(model.history)} epochs, {seconds:.0f} s"
    )
    return row, line


def selection_summary(runs: Runs, names, label: str, more: dict, choose_from=None) -> str:
    """The table of an experiment that chooses on the validation section, and the line naming the choice.

    ``choose_from``: the names the choice is among (default all; a reference row may stand beside them).
    """
    columns = {
        label: lambda g: g["config"].iloc[0],
        "validation Spearman (C6; chooses)": lambda g: mean_sd(g["validation_spearman"]),
        "test Spearman (B4 and C2; reported)": lambda g: mean_sd(g["test_spearman"]),
        **more,
        "runs": len,
    }
    summary = runs.summary("config", names, columns)
    cand = [r for r in summary if choose_from is None or r[label] in choose_from]
    best = max(cand, key=lambda r: float(r["validation Spearman (C6; chooses)"].split()[0])) if cand else None
    return table(summary) + (f"\n\nChosen on validation: {best[label]}\n" if best else "\n")
