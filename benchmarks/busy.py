"""A fit alone and beside CPU-bound processes, under cpnn's thread policy and under torch's default.

Run (a few minutes on 2 CPU cores; start it on an otherwise idle machine, it makes the load itself):
    CPNN_DATA_DIR=../shared/data python benchmarks/busy.py [--busy 2] [--epochs 60]

Fits on cached hand-crafted embeddings (top-250 panel, train C2-C5, validate C6, seed 0, a fixed
number of epochs: patience above the cap), with the default preset (256 spots a step) and the
faithful one (8 a step, a sixth of the epochs). Each is timed alone, then beside ``--busy``
processes that spin on the CPU (``while True: pass``), with ``cp.settings.n_jobs=None`` (the
idle cores, the default) and ``-1`` (every core: torch's default, cpnn before 0.3's thread
policy). Prints seconds a fit, the threads it used and the slowdown beside the busy processes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import table
from her2st import head_training_inputs

import cpnn as cp


def _fit(adata, train, val, preset: str, epochs: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    cp.tl.fit(
        adata, train=train, validation=val, encoder="handcrafted", seed=0, preset=preset,
        head_kwargs={"composition_key": "targets"}, data_kwargs={"embedding_key": "z_h"},
        train_kwargs={"epochs": epochs, "patience": 10 * epochs},
    )  # fmt: skip
    return time.perf_counter() - t0, int(adata.uns["cpnn"]["fit"]["threads"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=int, default=2, help="CPU-bound processes to run beside the fit")
    ap.add_argument("--epochs", type=int, default=60, help="epochs of the default preset (the faithful one: a sixth)")
    args = ap.parse_args()
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    _, adata, train, val = head_training_inputs()
    rows = []
    for preset, epochs in (("cpnn", args.epochs), ("paper", max(1, args.epochs // 6))):
        for n_jobs, policy in ((None, "idle cores (default)"), (-1, "every core (torch's default)")):
            cp.settings.n_jobs = n_jobs
            _fit(adata, train, val, preset, 1)  # warm-up
            alone, threads_alone = _fit(adata, train, val, preset, epochs)
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
            try:
                time.sleep(2.0)  # let the busy processes show in the kernel's counters
                busy, threads_busy = _fit(adata, train, val, preset, epochs)
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
            rows.append(
                {
                    "preset": preset,
                    "epochs": epochs,
                    "threads policy": policy,
                    "alone s (threads)": f"{alone:.1f} ({threads_alone})",
                    f"beside {args.busy} busy s (threads)": f"{busy:.1f} ({threads_busy})",
                    "slowdown": f"{busy / alone:.1f}x",
                }
            )
            print(rows[-1], flush=True)
            time.sleep(2.0)
    print(table(rows))


if __name__ == "__main__":
    main()
