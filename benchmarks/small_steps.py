"""Epochs a second of the faithful recipe (8 spots a step) with AdamW's fused kernel and with torch's CPU default.

Run (about a minute on 2 CPU cores, otherwise idle):
    CPNN_DATA_DIR=../shared/data python benchmarks/small_steps.py [--epochs 10] [--repeats 2]

Hand-crafted embeddings, top-250 panel, train C2-C5, validate C6, seed 0, a fixed number of
epochs. ``fused`` is what ``fit`` uses; ``per tensor`` is torch's default on the CPU (one
parameter tensor at a time), what ``fit`` used before. Prints epochs/s (best of repeats) and the
largest relative difference of the training and validation losses between the two.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _util import table
from her2st import head_training_inputs

import cpnn as cp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    cp.settings.n_jobs = -1  # every core in both runs: the optimiser is what differs
    _, adata, train, val = head_training_inputs()
    kw = dict(
        train=train, validation=val, encoder="handcrafted", seed=0, preset="paper",
        head_kwargs={"composition_key": "targets"}, data_kwargs={"embedding_key": "z_h"},
        train_kwargs={"epochs": args.epochs, "patience": 10 * args.epochs},
    )  # fmt: skip
    real = torch.optim.AdamW
    rows, histories = [], {}
    for name, options in (
        ("fused (fit's)", {}),
        ("per tensor (torch's CPU default)", {"fused": False, "foreach": False}),
    ):
        torch.optim.AdamW = lambda params, _o=options, **kw_: real(params, **{**kw_, **_o})
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model = cp.tl.fit(adata, **kw)
            times.append(time.perf_counter() - t0)
        torch.optim.AdamW = real
        histories[name] = model.history
        rows.append(
            {"optimiser": name, "epochs": len(model.history), "epochs/s": f"{len(model.history) / min(times):.2f}"}
        )
        print(rows[-1], flush=True)
    a, b = histories.values()
    diff = max(abs(x[k] - y[k]) / abs(y[k]) for x, y in zip(a, b, strict=True) for k in ("train_loss", "val_loss"))
    print(table(rows))
    print(f"largest relative difference of the losses: {diff:.1e}")


if __name__ == "__main__":
    main()
