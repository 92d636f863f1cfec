"""The demo's fold over seeds: what composition supervision does to ``cpnn demo``'s headline.

Run (about 10 minutes on 2 CPU cores):
    CPNN_DATA_DIR=../shared/data python benchmarks/demo_seeds.py

The demo's exact setting (top-250 panel, CID4465 NB prototypes, hand-crafted features, train
C2-C5, early stopping on C6, test B4, 300 epochs), fitted with ``seed`` 0, 1 and 2 without and with
composition supervision (NB deconvolution of C2-C5's counts, ``composition_key=``, the preset's
``comp_reg``), and with supervision plus 5 reference markers per type in the panel (scored on the
same 243 genes). Prints B4's mean per-gene Spearman, the agreement with the authors' stereoscope
proportions (mean Pearson over types) and the cell types switched off, per seed and mean +- sd.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _util import fit_options, mean_sd, table
from her2st import agreement

import cpnn as cp
from cpnn._core import switched_off

TRAIN, VALIDATION, TEST = ["C2", "C3", "C4", "C5"], ["C6"], "B4"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    sdata = cp.datasets.her2st()
    t = sdata["table"]
    ref = cp.datasets.wu2021_cid4465()
    cp.pp.select_genes(sdata, n_top_genes=250)
    cp.pp.build_prototypes(sdata, ref, cell_type_key="celltype_major", method="nb")
    base = list(t.var_names[t.var["cpnn_selected"].to_numpy(bool)])
    cp.pp.deconvolve(sdata, regions=TRAIN)
    stereo = cp.datasets.her2st_proportions("major", sections=[TEST]).reindex(t.obs_names)
    test = (t.obs["section"] == TEST).to_numpy()
    configs = {
        "unsupervised (before)": ({}, False),
        "supervised (demo now)": ({"composition_key": "cpnn_deconvolution"}, False),
        "supervised + markers": ({"composition_key": "cpnn_deconvolution"}, True),
    }
    rows = []
    for name, (kw, markers) in configs.items():
        if markers:
            cp.pp.select_genes(sdata, genes=base, markers=5, reference=ref, cell_type_key="celltype_major")
        else:
            cp.pp.select_genes(sdata, genes=base)
        for seed in range(args.seeds):
            model = cp.tl.fit(
                sdata, train=TRAIN, validation=VALIDATION,
                **fit_options(encoder="handcrafted", epochs=args.epochs, seed=seed, **kw),
            )  # fmt: skip
            cp.tl.predict(sdata, model, regions=[TEST])
            df = cp.tl.evaluate(sdata, genes=[g for g in base if g in model.genes], spots=test, groupby="section")
            props = t.obsm["cpnn_proportions"]
            a = agreement(t, props, stereo, test)
            rows.append(
                {
                    "config": name,
                    "seed": seed,
                    "Spearman on B4": float(df["spearman_mean"].mean()),
                    "agreement": float(np.nanmean(list(a.values()))),
                    "switched off": len(switched_off(props.loc[test].to_numpy(), model.cell_types)),
                    "epochs": len(model.history),
                }
            )
            print(rows[-1], flush=True)
    runs = pd.DataFrame(rows)
    summary = []
    for name, g in runs.groupby("config", sort=False):
        summary.append(
            {
                "config": name,
                "Spearman on B4 (mean +- sd over seeds)": mean_sd(g["Spearman on B4"]),
                "stereoscope agreement": mean_sd(g["agreement"], 2),
                "types switched off": f"{g['switched off'].mean():.1f}",
                "per seed": ", ".join(f"{v:.3f}" for v in g["Spearman on B4"]),
            }
        )
    print(table(summary))


if __name__ == "__main__":
    main()
