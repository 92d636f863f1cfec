"""Compositions you can trust: deconvolution against stereoscope, and composition supervision.

Run (about 3.5 hours on 2 CPU cores: 15 minutes of deconvolution, then ~25 minutes a fold):
    CPNN_DATA_DIR=../shared/data python benchmarks/compositions.py --out results/compositions
Quick check: ``--quick`` (deconvolution of 12 sections, LOPO C -> B4 only, one seed).
``--resume`` keeps the runs already in ``<out>/folds.csv`` and does only the missing ones.

Part 1, no images: ``cp.pp.deconvolve`` (``nb`` and ``nnls``) on every spot of all 36 HER2ST
sections, with NB prototypes of the CID4465 cells (9 major types) and with the atlas profiles
(76 states summed into 8 types), against the authors' stereoscope proportions (major types):
Pearson over spots per cell type and the mean over types; spots/s and peak memory. The two
methods share neither code nor reference cells with stereoscope.

Part 2, image-derived compositions on held-out spots, both protocols (LOPO: 2 folds; LOSO: 6
folds), both panels (top-250 by mean, HisToGene), hand-crafted features: the paper's model and
cpnn's default, each without and with composition supervision (``composition_key=``: NB
deconvolution of the fold's *training* spots only, weight ``comp_reg=1e3`` as in the paper, and
ten times that for the default, whose squared-error loss sums over the panel's genes), plus
the default with supervision and marker genes in the panel (5 per type, Wilcoxon on the
reference; evaluated on the base panel), and the direct head for reference. Each configuration
runs with 3 seeds. Reported: mean per-gene Spearman per held-out section (mean +- sd over folds of
the seed means, and +- sd over seeds of the fold means), agreement of the image-derived
proportions with stereoscope (mean Pearson over types, on held-out spots), and how many cell types
the network switched off (never above 1 % on a held-out spot).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, Runs, fit_options, mean_sd, table
from her2st import held_out_scores, panels, to_stereoscope

import cpnn as cp
from cpnn._core import columnwise_pearson, switched_off
from cpnn.datasets._her2st import HER2ST_SECTIONS

CONFIGS = {
    # name: (fit options, supervised, markers)
    "paper": ({"preset": "paper"}, False, False),
    "paper + supervision": ({"preset": "paper"}, True, False),
    "cpnn default": ({"preset": "cpnn"}, False, False),
    "cpnn default + supervision": ({"preset": "cpnn", "comp_reg": 1e3}, True, False),
    "cpnn default + supervision x10": ({"preset": "cpnn", "comp_reg": 1e4}, True, False),
    "cpnn default + supervision + markers": ({"preset": "cpnn", "comp_reg": 1e3}, True, True),
    "direct": ({"head": "direct", "preset": "cpnn"}, False, False),
}


def deconvolution_part(args) -> tuple[list[dict], list[dict]]:
    sections = list(HER2ST_SECTIONS) if not args.quick else [f"{p}{i}" for p in "AB" for i in range(1, 7)]
    sdata = cp.datasets.her2st(sections, images=False)
    t = sdata["table"]
    stereo = cp.datasets.her2st_proportions("major", sections=sections).reindex(t.obs_names)
    ref = cp.datasets.wu2021_cid4465()
    atlas = cp.datasets.wu2021_profiles()
    cp.pp.build_prototypes(t, ref, cell_type_key="celltype_major", method="nb", key_added="proto_nb")
    cp.pp.build_prototypes(t, atlas, cell_type_map=atlas.attrs["cell_type_map"], key_added="proto_atlas")
    rows, cost = [], []
    for label, key in (("CID4465 NB prototypes", "proto_nb"), ("atlas profiles", "proto_atlas")):
        for method in ("nb", "nnls"):
            with Peak() as p:
                cp.pp.deconvolve(t, method=method, prototypes_key=key, key_added="dec", seed=args.seed)
            mapped = to_stereoscope(t.obsm["dec"])
            ok = mapped.notna().all(1).to_numpy()
            r = {
                c: float(columnwise_pearson(mapped.loc[ok, [c]].to_numpy(), stereo.loc[ok, [c]].to_numpy())[0])
                for c in stereo.columns
                if c in mapped
            }
            rows.append({"prototypes": label, "method": method, **{k: round(v, 2) for k, v in r.items()},
                         "mean over types": round(float(np.nanmean(list(r.values()))), 3)})  # fmt: skip
            cost.append(
                {
                    "prototypes": label,
                    "method": method,
                    "spots": int(ok.sum()),
                    "genes": t.uns["cpnn"]["deconvolution"]["dec"]["n_genes"],
                    "seconds": p.seconds,
                    "spots/s": ok.sum() / p.seconds,
                    "peak MiB": p.added,
                }
            )
            print(rows[-1], cost[-1], flush=True)
    return rows, cost


def fold_part(args) -> pd.DataFrame:
    sdata = cp.datasets.her2st()
    adata = sdata["table"]
    ref = cp.datasets.wu2021_cid4465()
    atlas = cp.datasets.wu2021_profiles()
    stereo = cp.datasets.her2st_proportions("major").reindex(adata.obs_names)
    cp.pp.build_prototypes(adata, ref, cell_type_key="celltype_major", method="nb", key_added="cpnn_prototypes")
    nb_ok = adata.var_names[adata.var["cpnn_in_reference"].to_numpy(bool)]
    panel_sets = panels(adata, nb_ok, atlas, n_top=250)
    cp.pp.embed(sdata, encoder="handcrafted", key_added="z_h")
    folds = [("LOPO", f) for f in cp.tl.split(adata, by="patient")]
    folds += [("LOSO", f) for f in cp.tl.split(adata, by="section")]
    seeds = [args.seed] if args.quick else [args.seed + k for k in range(3)]
    if args.quick:
        folds = [(p, f) for p, f in folds if p == "LOPO" and f.attrs["test"] == ["B"]]
    runs = Runs(args.out, resume=args.resume, key=("protocol", "fold", "panel", "config", "seed"), name="folds.csv")
    for proto, fold in folds:
        todo = [
            (panel, name, seed)
            for panel in panel_sets
            for name, (_, _, markers) in CONFIGS.items()
            if not (markers and not panel.startswith("top"))
            for seed in seeds
            if not runs.done(proto, fold.name, panel, name, seed)
        ]
        if not todo:
            continue
        train, val, test = ((fold == r).to_numpy() for r in ("train", "validation", "test"))
        # targets: NB deconvolution of the training spots only (validation and test never deconvolved)
        cp.pp.deconvolve(adata, regions=train, key_added="targets", seed=args.seed)
        for panel, genes in panel_sets.items():
            for name, (kw, supervised, markers) in CONFIGS.items():
                if markers and not panel.startswith("top"):
                    continue
                if markers:
                    cp.pp.select_genes(adata, genes=genes, markers=5, reference=ref, cell_type_key="celltype_major")
                else:
                    cp.pp.select_genes(adata, genes=genes)
                for seed in seeds:
                    if runs.done(proto, fold.name, panel, name, seed):
                        continue
                    t0 = time.perf_counter()
                    model = cp.tl.fit(
                        adata, train=train, validation=val,
                        **fit_options(
                            encoder="handcrafted", embedding_key="z_h", epochs=args.epochs, patience=20, seed=seed,
                            composition_key="targets" if supervised else None, **kw,
                        ),
                    )  # fmt: skip
                    scores = held_out_scores(adata, model, genes, test, stereo, embedding_key="z_h")
                    row = {
                        "protocol": proto, "fold": fold.name, "panel": panel, "config": name, "seed": seed,
                        "test_spearman": scores.pop("spearman"), "epochs": len(model.history),
                        "seconds": time.perf_counter() - t0, **scores,
                    }  # fmt: skip
                    if model.has_composition:
                        props = adata.obsm["bench_proportions"]
                        row["switched_off"] = len(switched_off(props.loc[test].to_numpy(), model.cell_types))
                    runs.add(
                        row,
                        f"{proto} {fold.name} {panel} {name} seed {seed}: Spearman {row['test_spearman']:.3f} "
                        f"agreement {row.get('agreement', float('nan')):.2f} off {row.get('switched_off', '-')}",
                    )
    return runs.frame()


def summary(runs: pd.DataFrame) -> list[str]:
    lines = []
    for (proto, panel), grp in runs.groupby(["protocol", "panel"], sort=False):
        out = []
        for name in CONFIGS:
            g = grp[grp["config"] == name]
            if g.empty:
                continue
            per_fold = g.groupby("fold")[["test_spearman", "agreement", "switched_off"]].mean(numeric_only=True)
            per_seed = g.groupby("seed")[["test_spearman", "agreement"]].mean(numeric_only=True)
            r = {
                "config": name,
                "test Spearman (+- sd over folds)": mean_sd(per_fold["test_spearman"]),
                "+- sd over seeds": f"{per_seed['test_spearman'].std(ddof=0):.3f}",
            }
            if g["agreement"].notna().any():
                r["stereoscope agreement"] = (
                    f"{mean_sd(per_fold['agreement'], 2)} (seeds +- {per_seed['agreement'].std(ddof=0):.2f})"
                )
                r["types switched off"] = f"{per_fold['switched_off'].mean():.1f}"
            else:
                r["stereoscope agreement"] = "-"
                r["types switched off"] = "-"
            r["folds x seeds"] = f"{g['fold'].nunique()} x {g['seed'].nunique()}"
            out.append(r)
        lines += [f"### {proto}, {panel}", "", table(out), ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/compositions")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-deconvolution", action="store_true")
    ap.add_argument("--resume", action="store_true", help="keep the runs in <out>/folds.csv, do the rest")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    t0 = time.time()
    lines = [f"# Compositions ({time.strftime('%Y-%m-%d')}, {'quick' if args.quick else 'full'})", ""]
    if not args.skip_deconvolution:
        rows, cost = deconvolution_part(args)
        lines += ["## Deconvolution vs stereoscope (Pearson over spots)", "", table(rows), "", table(cost), ""]
        (Path(args.out) / "tables.md").write_text("\n".join(lines))
    runs = fold_part(args)
    lines += ["## Image-derived compositions on held-out spots", "", *summary(runs)]
    lines.append(f"total {time.time() - t0:.0f} s")
    text = "\n".join(lines)
    (Path(args.out) / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
