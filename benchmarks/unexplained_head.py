"""The head's unexplained component on HER2ST, in the demo's setting: chosen on the validation section only.

Run (about 20 minutes on one thread of 2 CPU cores: 3 settings x 3 seeds):
    CPNN_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/unexplained_head.py --out results/unexplained_head --resume

Issue #42: ``cp.tl.fit(unexplained=...)`` adds a component for tissue the reference has no type
for (stereoscope's dummy type; B4's fat, without adipocytes in the CID4465 reference). The demo's
setting (train C2-C5, early stopping on C6, hand-crafted features, top-250 panel, NB prototypes of
CID4465's ``celltype_major``) with ``unexplained`` None, ``"flat"`` and ``"learned"``, 3 seeds each.
The choice reads the validation section C6 only: gene Spearman (mean over genes) and agreement
with stereoscope (Pearson over spots, mean over types). B4, the held-out section, is reported:
Spearman, agreement, and on its low-tissue spots (fat and glass: tissue fraction < 0.5 in the
nuclei encoder's reading) the epithelial share next to stereoscope's and the unexplained share.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, Runs, experiment_args, mean_sd, table
from her2st import agreement, low_tissue, to_stereoscope

import cpnn as cp

TRAIN, VALIDATION, TEST = ["C2", "C3", "C4", "C5"], ["C6"], "B4"
SETTINGS = {"none": None, "flat": "flat", "learned": "learned"}


def main() -> None:
    ap = experiment_args(__doc__, out="results/unexplained_head", seeds=3)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    args = ap.parse_args()
    runs = Runs(args.out, resume=args.resume, key=("setting", "seed"))

    sdata = cp.datasets.her2st()
    table_ = sdata["table"]
    stereo = cp.datasets.her2st_proportions("major").reindex(table_.obs_names)
    cp.pp.embed(sdata, encoder="nuclei", key_added="z_nuclei", spots=[TEST])  # reads the tissue fraction only
    fat = (table_.obs["section"] == TEST).to_numpy()
    fat[fat] = low_tissue(table_.obsm["z_nuclei"][fat])
    cp.pp.select_genes(sdata, n_top_genes=250)
    cp.pp.build_prototypes(sdata, cp.datasets.wu2021_cid4465(), cell_type_key="celltype_major", method="nb")
    genes = list(table_.var_names[table_.var["cpnn_selected"]])
    val = table_.obs["section"].isin(VALIDATION).to_numpy()
    test = (table_.obs["section"] == TEST).to_numpy()
    for seed in range(args.seeds):
        for name in args.settings:
            if runs.done(name, seed):
                continue
            key = f"u_{name}"
            with Peak() as p:
                model = cp.tl.fit(sdata, train=TRAIN, validation=VALIDATION, encoder="handcrafted", seed=seed,
                                  head_kwargs={"unexplained": SETTINGS[name]}, key_added=key)  # fmt: skip
                cp.tl.predict(sdata, model, regions=[*VALIDATION, TEST], key_added=key)
            df = cp.tl.evaluate(sdata, layer=key, genes=genes, groupby="section")
            props = table_.obsm[f"{key}_proportions"]
            mapped = to_stereoscope(props.drop(columns=["unexplained"], errors="ignore"))
            row = {
                "setting": name,
                "seed": seed,
                "C6 Spearman": float(df["spearman_C6"].mean()),
                "C6 agreement": float(np.nanmean(list(agreement(table_, props, stereo, val).values()))),
                "B4 Spearman": float(df[f"spearman_{TEST}"].mean()),
                "B4 agreement": float(np.nanmean(list(agreement(table_, props, stereo, test).values()))),
                "B4 fat epithelial": float(mapped.loc[fat, "Epithelial"].mean()),
                "B4 fat unexplained": float(props.loc[fat, "unexplained"].mean()) if "unexplained" in props else 0.0,
                "B4 unexplained": float(props.loc[test, "unexplained"].mean()) if "unexplained" in props else 0.0,
                "epochs": len(model.history),
                "seconds": p.seconds,
            }
            runs.add(row, str({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    res = runs.frame()
    cols = ["C6 Spearman", "C6 agreement", "B4 Spearman", "B4 agreement", "B4 fat epithelial", "B4 fat unexplained",
            "B4 unexplained"]  # fmt: skip
    summary = [
        {"setting": s, "seeds": len(g), **{c: mean_sd(g[c]) for c in cols}}
        for s, g in res.groupby("setting", sort=False)
    ]
    text = [
        f"Demo setting (train C2-C5, validation C6, test B4, hand-crafted), mean +- sd over seeds; B4 fat: "
        f"{int(fat.sum())} low-tissue spots, stereoscope epithelial {stereo.loc[fat, 'Epithelial'].mean():.3f}.",
        "",
        table(summary),
    ]
    runs.write("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
