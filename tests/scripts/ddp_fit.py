"""A fit run by tests under torchrun (or alone): synthetic data, fixed seed; rank 0 writes the result.

Usage: python ddp_fit.py OUT [--checkpoint DIR] [--kill-at EPOCH] [--resume] [--collection]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests._synthetic import synthetic_sdata

import cpnn as cp
from cpnn._core import dist


class Killed(SystemExit):
    pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--checkpoint")
    ap.add_argument("--kill-at", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--collection", action="store_true")
    args = ap.parse_args()
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    sdata, profiles = synthetic_sdata(np.random.default_rng(9), n_side=8, sections=("S1", "S2", "S3"))
    cp.pp.select_genes(sdata, n_top_genes=40)
    cp.pp.build_prototypes(sdata, profiles)
    if args.kill_at:  # every process stops once the checkpoint of that epoch is written (after its barrier)
        real_barrier = dist.barrier
        counter = {"n": 0}

        def barrier_then_die():
            real_barrier()
            counter["n"] += 1
            if counter["n"] == args.kill_at:
                raise Killed(3)

        dist.barrier = barrier_then_die
    kw = {
        "encoder": "handcrafted",
        "patch_size_um": 32,
        "patch_px": 32,
        "epochs": 12,
        "patience": 100,
        "lr": 3e-3,
        "seed": 0,
        "batch_size": 64,
        "context_um": 0,
    }
    if args.collection:
        parts = {}
        for s in ("S1", "S2", "S3"):
            sub = sdata.subset([f"{s}_full", f"{s}_hires", f"{s}_spots"], filter_tables=True)
            t = sub["table"]
            t.obs["region"] = t.obs["region"].cat.remove_unused_categories()
            t.uns["spatialdata_attrs"]["region"] = [f"{s}_spots"]
            parts[s] = sub
        model = cp.tl.fit(parts, train=["S1", "S2"], validation=["S3"], panel=sdata["table"], **kw)
    else:
        model = cp.tl.fit(
            sdata, train=["S1", "S2"], validation=["S3"], checkpoint_dir=args.checkpoint, resume=args.resume, **kw
        )
    if dist.is_main():
        torch.save(
            {
                "history": model.history,
                "head": model.head.state_dict(),
                "world": dist.world(),
                "rank_env": os.environ.get("RANK"),
            },
            args.out,
        )


if __name__ == "__main__":
    main()
