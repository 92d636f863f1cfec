"""Choosing ``preset="cpnn"`` on validation sections only, now that the step budget is known to matter.

Run (about 25 minutes on 2 CPU cores; ``--resume`` keeps the rows already in ``<out>/runs.csv``):
    CPNN_DATA_DIR=../shared/data python benchmarks/default_selection.py --out results/default_selection

The candidates share cpnn's model choices (squared error on log1p CP10k, 150 um context, composition
loss x 1e4 against the training spots' NB deconvolution, made by ``targets="deconvolve"``) and differ
in the training recipe: batch size, learning rate, input standardisation, all with a 1000-epoch cap
and patience 30. Each runs on the two folds of ``paper_fidelity.py`` (train C2-C5 or C3-C5,
validate on C6) with 2 seeds. **The choice reads only the validation section C6** (mean per-gene
Spearman of the best checkpoint on C6); the test sections' scores are printed beside it for the
record, never used to choose. The faithful recipe (``preset="paper"``) runs too, for the wall-time
ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _util import mean_sd, previous_runs, table
from her2st import nb_prototypes_and_panels

import cpnn as cp

FOLDS = {"B4": (["C2", "C3", "C4", "C5"], "C6"), "C2": (["C3", "C4", "C5"], "C6")}
BASE = {"preset": "cpnn", "epochs": 1000, "patience": 30}
CANDIDATES = {
    "batch 256, lr 1e-3, z-scored": {"batch_size": 256, "lr": 1e-3, "standardise": True},
    "batch 256, lr 3e-3, z-scored": {"batch_size": 256, "lr": 3e-3, "standardise": True},
    "batch 64, lr 1e-3, z-scored": {"batch_size": 64, "lr": 1e-3, "standardise": True},
    "batch 64, lr 3e-3, z-scored": {"batch_size": 64, "lr": 3e-3, "standardise": True},
    "batch 256, lr 3e-3, raw": {"batch_size": 256, "lr": 3e-3, "standardise": False},
    "batch 64, lr 1e-3, raw": {"batch_size": 64, "lr": 1e-3, "standardise": False},
}
PAPER = {"preset": "paper"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/default_selection")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cp.settings.progress_bar = False
    csv = out / "runs.csv"
    rows, done = previous_runs(csv, resume=args.resume, key=("test", "config", "seed"))

    sdata = cp.datasets.her2st()
    adata = sdata["table"]
    genes = nb_prototypes_and_panels(adata)["top-250"]
    cp.pp.select_genes(adata, genes=genes)
    cp.pp.embed(sdata, encoder="handcrafted", key_added="z_h")
    section = adata.obs["section"].astype(str)
    configs = {**{k: {**BASE, **v} for k, v in CANDIDATES.items()}, "paper (faithful recipe)": PAPER}
    for test, (train_secs, val_sec) in FOLDS.items():
        train, val = section.isin(train_secs).to_numpy(), (section == val_sec).to_numpy()
        held = (section == test).to_numpy()
        for seed in range(args.seeds):
            cp.pp.deconvolve(adata, regions=train, key_added="targets", seed=seed)
            for name, kw in configs.items():
                if (test, name, seed) in done:
                    continue
                t0 = time.perf_counter()
                model = cp.tl.fit(
                    adata, train=train, validation=val, encoder="handcrafted", embedding_key="z_h", seed=seed,
                    composition_key="targets", **kw,
                )  # fmt: skip
                seconds = time.perf_counter() - t0
                scores = {}
                for side, mask in (("validation", val), ("test", held)):
                    cp.tl.predict(adata, model, regions=mask, key_added="sel", embedding_key="z_h")
                    df = cp.tl.evaluate(adata, layer="sel", genes=genes, spots=mask)
                    scores[side] = float(df["spearman_pooled"].mean())  # one section: pooled = per section
                fit = adata.uns["cpnn"]["fit"]
                row = {
                    "test": test,
                    "config": name,
                    "seed": seed,
                    "validation_spearman": scores["validation"],
                    "test_spearman": scores["test"],
                    "epochs": len(model.history),
                    "best_epoch": int(fit["best_epoch"]),
                    "at_cap": bool(fit["still_improving_at_cap"]),
                    "seconds": seconds,
                }
                rows.append(row)
                print(
                    f"{test} {name} seed {seed}: validation {row['validation_spearman']:.3f}, test "
                    f"{row['test_spearman']:.3f}, {row['epochs']} epochs, {seconds:.0f} s",
                    flush=True,
                )
                pd.DataFrame(rows).to_csv(csv, index=False)
    runs = pd.DataFrame(rows)
    summary = []
    for name in configs:
        g = runs[runs["config"] == name]
        if g.empty:
            continue
        summary.append(
            {
                "configuration": name,
                "validation Spearman (C6; chooses)": mean_sd(g["validation_spearman"]),
                "test Spearman (B4 and C2; reported)": mean_sd(g["test_spearman"]),
                "epochs": f"{g['epochs'].mean():.0f}",
                "runs at the cap": int(g["at_cap"].sum()),
                "seconds": f"{g['seconds'].mean():.0f}",
                "runs": len(g),
            }
        )
    cand = [r for r in summary if r["configuration"] in CANDIDATES]
    best = max(cand, key=lambda r: float(r["validation Spearman (C6; chooses)"].split()[0])) if cand else None
    text = table(summary) + (f"\n\nChosen on validation: {best['configuration']}\n" if best else "\n")
    (out / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
