"""Closing the gap between the prototype head and direct regression: the accuracy switches of cp.tl.fit.

Run (full, about 35 minutes on 2 CPU cores):
    CPNN_DATA_DIR=../shared/data python benchmarks/ablation.py --out results/ablation
Quick check (about 3 minutes): add ``--quick`` (LOPO C -> B4, top-250 panel).

Every fold of leave-one-section-out (6) and leave-one-patient-out (2), on the top-250 and the
HisToGene panels, with the same hand-crafted features for every head. Each switch of
:func:`cpnn.tl.fit` alone on top of the paper's model, then the combination of the switches
that raised the mean *validation* Spearman; hyper-parameters (residual strength, context radius)
are picked per fold on the fold's validation spots. The held-out section is only used for the
reported test numbers. Also reported: the composition share (share of the predicted
log-expression's variation reproduced by the composition term), the agreement of the
proportions with the stereoscope proportions (mean Pearson over cell types), and the direct head
with and without the same spatial context.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _util import table
from her2st import agreement, panels

import cpnn as cp

#: the switches, each with its candidate values (chosen per fold on validation when several)
SWITCHES: dict[str, list[dict]] = {
    "residual": [{"residual": 1.0}, {"residual": 10.0}],
    "spatial context": [{"context_um": 150.0}, {"context_um": 300.0}],
    "fine prototypes": [{"prototypes_key": "proto_fine"}],
    "sample correction": [{"sample_key": "section"}],
    "MSE loss": [{"loss": "mse"}],
}
PAPER = {"head": "cpnn", "preset": "paper", "prototypes_key": "proto_nb"}


def run(adata, fold, genes, kw: dict, stereo: pd.DataFrame, args) -> dict:
    """Fit on the fold's training spots; Spearman on validation and held-out spots, share, agreement."""
    train, val, test = ((fold == r).to_numpy() for r in ("train", "validation", "test"))
    t0 = time.perf_counter()
    model = cp.tl.fit(
        adata,
        train=train,
        validation=val,
        encoder="handcrafted",
        embedding_key="z_h",
        epochs=args.epochs,
        patience=20,
        seed=args.seed,
        **kw,
    )
    out = {"epochs": len(model.history)}
    for name, mask in (("val", val), ("test", test)):
        cp.tl.predict(adata, model, regions=mask, key_added="abl", embedding_key="z_h")
        df = cp.tl.evaluate(adata, layer="abl", genes=genes, spots=mask, groupby="section")
        cols = [c for c in df.columns if c.startswith("spearman_") and c not in ("spearman_mean", "spearman_pooled")]
        out[f"{name}_spearman"] = float(np.nanmean([df[c].mean() for c in cols]))
        if name == "test":
            out["share"] = float(adata.uns["cpnn"]["predict"]["composition_share"])
            if "abl_proportions" in adata.obsm:
                a = agreement(adata, adata.obsm["abl_proportions"], stereo, test)
                out["agreement"] = float(np.nanmean(list(a.values())))
    out["seconds"] = time.perf_counter() - t0
    for key in [k for k in adata.obsm if k.startswith("abl_")]:
        del adata.obsm[key]
    return out


def pick(adata, fold, genes, base: dict, candidates: list[dict], stereo, args) -> tuple[dict, dict]:
    """The candidate with the best validation Spearman, and its result."""
    results = [(run(adata, fold, genes, {**base, **c}, stereo, args), c) for c in candidates]
    res, chosen = max(results, key=lambda rc: rc[0]["val_spearman"])
    return res, chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/ablation")
    ap.add_argument("--quick", action="store_true", help="LOPO C -> B4 and the top-250 panel only")
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cp.settings.verbosity = 0
    t_start = time.time()

    sdata = cp.datasets.her2st()
    adata = sdata["table"]
    ref = cp.datasets.wu2021_cid4465()
    atlas = cp.datasets.wu2021_profiles()
    stereo = cp.datasets.her2st_proportions("major").reindex(adata.obs_names)
    cp.pp.build_prototypes(adata, ref, cell_type_key="celltype_major", method="nb", key_added="proto_nb")
    cp.pp.build_prototypes(
        adata, ref, cell_type_key="celltype_minor", groups="celltype_major", method="nb", key_added="proto_fine"
    )
    both = adata.var["proto_nb_in_reference"].to_numpy(bool) & adata.var["proto_fine_in_reference"].to_numpy(bool)
    panel_sets = panels(adata, adata.var_names[both], atlas, n_top=250)
    cp.pp.embed(sdata, encoder="handcrafted", key_added="z_h")
    folds = [("LOPO", f) for f in cp.tl.split(adata, by="patient")]
    folds += [("LOSO", f) for f in cp.tl.split(adata, by="section")]
    if args.quick:
        folds = [(p, f) for p, f in folds if p == "LOPO" and f.attrs["test"] == ["B"]]
        panel_sets = dict(list(panel_sets.items())[:1])

    rows = []

    def record(where: dict, config: str, res: dict, chosen: dict | None = None) -> None:
        rows.append({**where, "config": config, **res, "chosen": "" if not chosen else str(chosen)})
        print(
            f"  {where['panel']:>15} | {config:<28} test {res['test_spearman']:.3f} val {res['val_spearman']:.3f} "
            f"share {res.get('share', np.nan):.2f} agree {res.get('agreement', np.nan):.2f} "
            f"({res['seconds']:.0f} s, {res['epochs']} ep)",
            flush=True,
        )

    # stage 1: the paper, each switch alone, direct with and without context
    for proto, fold in folds:
        print(f"{proto} | {fold.name}", flush=True)
        for panel, genes in panel_sets.items():
            cp.pp.select_genes(adata, genes=genes)
            where = {"protocol": proto, "fold": fold.name, "panel": panel}
            record(where, "paper", run(adata, fold, genes, PAPER, stereo, args))
            for name, candidates in SWITCHES.items():
                res, chosen = pick(adata, fold, genes, PAPER, candidates, stereo, args)
                record(where, f"+ {name}", res, chosen)
            record(where, "direct", run(adata, fold, genes, {"head": "direct"}, stereo, args))
            res, chosen = pick(adata, fold, genes, {"head": "direct"}, SWITCHES["spatial context"], stereo, args)
            record(where, "direct + spatial context", res, chosen)

    # stage 2: the switches that raised the mean validation Spearman over the paper, together
    stage1 = pd.DataFrame(rows)
    val = stage1.groupby("config")["val_spearman"].mean()
    helpful = [n for n in SWITCHES if val[f"+ {n}"] > val["paper"]]
    print(f"switches that raised the mean validation Spearman: {helpful}", flush=True)
    for proto, fold in folds:
        for panel, genes in panel_sets.items():
            cp.pp.select_genes(adata, genes=genes)
            where = {"protocol": proto, "fold": fold.name, "panel": panel}
            base = dict(PAPER)
            fixed = [n for n in helpful if len(SWITCHES[n]) == 1]
            for n in fixed:
                base.update(SWITCHES[n][0])
            tuned = [n for n in helpful if len(SWITCHES[n]) > 1]
            grid = [{}]
            for n in tuned:
                grid = [{**g, **c} for g in grid for c in SWITCHES[n]]
            res, chosen = pick(adata, fold, genes, base, grid, stereo, args)
            record(where, "combination", res, {**{k: v for k, v in base.items() if k not in PAPER}, **chosen})

    res = pd.DataFrame(rows)
    res.to_csv(out / "ablation.csv", index=False)
    text = [f"switches kept for the combination (mean validation Spearman above the paper's): {helpful}", ""]
    for (proto, panel), grp in res.groupby(["protocol", "panel"], sort=False):
        summary = []
        for config, g in grp.groupby("config", sort=False):
            summary.append(
                {
                    "config": config,
                    "test Spearman": f"{g['test_spearman'].mean():.3f} ± {g['test_spearman'].std(ddof=0):.3f}",
                    "validation Spearman": f"{g['val_spearman'].mean():.3f}",
                    "composition share": f"{g['share'].mean():.2f}" if g["share"].notna().any() else "-",
                    "stereoscope agreement": f"{g['agreement'].mean():.2f}"
                    if "agreement" in g and g["agreement"].notna().any()
                    else "-",
                    "folds": len(g),
                }
            )
        text += [f"### {proto}, {panel}", "", table(summary), ""]
    (out / "tables.md").write_text("\n".join(text))
    print("\n".join(text))
    print(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
