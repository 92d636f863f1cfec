"""Wall time of a CPU fit on cached embeddings against the number of torch threads.

Run (a few minutes on 2 CPU cores; run it on an otherwise idle machine):
    CPNN_DATA_DIR=../shared/data python benchmarks/threads.py [--threads 1 2] [--repeats 2]

Both presets, hand-crafted embeddings, top-250 panel, train C2-C5, validate C6, seed 0. The
training of a head on cached embeddings is many small matrix products (``preset="paper"``: 8
spots a step). In one process torch's default (one thread per core) is the faster; what costs is
several such processes side by side each using every core (docs/performance.md). Prints seconds
per fit and epochs per second for each thread count (``cp.settings.n_jobs``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import table
from her2st import head_training_inputs

import cpnn as cp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    _, adata, train, val = head_training_inputs(nb_panel=True)
    rows = []
    for preset in ("paper", "cpnn"):
        for n in args.threads:
            cp.settings.n_jobs = n  # cpnn sets torch's threads for each fit from it (0.3's thread policy)
            times, epochs = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model = cp.tl.fit(
                    adata, train=train, validation=val, encoder="handcrafted", seed=0, preset=preset,
                    head_kwargs={"composition_key": "targets"}, data_kwargs={"embedding_key": "z_h"},
                )  # fmt: skip
                times.append(time.perf_counter() - t0)
                epochs.append(len(model.history))
            best = min(times)
            rows.append(
                {
                    "preset": preset,
                    "torch threads": n,
                    "seconds a fit (best of repeats)": f"{best:.1f}",
                    "epochs": epochs[0],
                    "epochs/s": f"{epochs[0] / best:.1f}",
                }
            )
            print(rows[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
