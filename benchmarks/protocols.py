"""The accuracy story on the faithful recipe: both presets, direct and ridge, per encoder, LOSO and LOPO.

Run (hours on 2 CPU cores in full; resumable, seed-major so that a partial run covers every fold):
    CPNN_DATA_DIR=../shared/data python benchmarks/protocols.py --out results/protocols --resume
Quick check: ``--folds section=B4 patient=B --seeds 1``. Subsets: ``--panels top-250``,
``--encoders handcrafted nuclei``, ``--methods "cpnn default" ridge``.

Folds: leave-one-patient-out over the six imaged sections (2 folds) and leave-one-section-out (6),
validation taken from the training side by ``cp.tl.split`` (never the held-out section). Panels:
top 250 by mean (the paper's protocol) and HisToGene's 727, both restricted to genes every method
can predict. Encoders, all offline and weight-free or random: ``handcrafted`` colour/texture,
``nuclei`` (nuclear morphometry at 0.5 um/px plus the colour/texture statistics), and resnet18 at
random initialisation (frozen); ``handcrafted + macenko`` and ``nuclei + macenko`` take the same
features after each slide's stain is mapped onto the usual Macenko reference
(``encoder_kwargs={"stain": "macenko"}``, issue #42). Stain run:
    CPNN_DATA_DIR=../shared/data python benchmarks/protocols.py --out results/protocols_stain --panels top-250 \
        --encoders handcrafted nuclei "handcrafted + macenko" "nuclei + macenko" --methods "cpnn default" --resume
``nuclei (segmented once)`` segments each section's tissue once (``encoder_kwargs={"segment": "once"}``,
issue #39; the default segments ST's sparse patches each alone, with the features of ``nuclei``). Run:
    CPNN_DATA_DIR=../shared/data python benchmarks/protocols.py --out results/protocols_once --panels top-250 \
        --encoders nuclei "nuclei (segmented once)" --methods "cpnn default" --resume
Methods: ``preset="paper"`` (the authors' recipe, composition
loss against the training spots' NB deconvolution), ``preset="cpnn"`` (the shipped default, with
the same targets), ``head="direct"`` and ``head="ridge"``; 3 seeds (ridge is deterministic: one).

Per run: mean per-gene Spearman per held-out section, and for composition heads the agreement of
the image-derived composition with the authors' stereoscope proportions on the held-out spots
(mean Pearson over the 8 stereoscope types) and, on the held-out B4 spots with little tissue
(tissue fraction < 0.5 in the nuclei encoder's reading), the mean predicted epithelial share
next to stereoscope's. ``<out>/runs.csv`` holds every run; ``<out>/tables.md`` the summary (mean
+- sd over folds of the seed means, and the sd over seeds of the fold means).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _util import Runs, experiment_args, fit_options, mean_sd, table
from her2st import held_out_scores, low_tissue, nb_prototypes_and_panels, to_stereoscope

import cpnn as cp

METHODS = {
    "paper": {"preset": "paper"},
    "cpnn default": {"preset": "cpnn"},
    "direct": {"head": "direct", "preset": "cpnn"},
    "ridge": {"head": "ridge"},
}
ENCODERS = {
    "handcrafted": {},
    "nuclei": {},
    "resnet18 (random, frozen)": {"encoder": "resnet18"},
    # issue #42: each slide's stain mapped onto the usual Macenko reference before the encoder
    "handcrafted + macenko": {"encoder": "handcrafted", "encoder_kwargs": {"stain": "macenko"}},
    "nuclei + macenko": {"encoder": "nuclei", "encoder_kwargs": {"stain": "macenko"}},
    # issue #39: the tissue segmented once per section (the default segments ST's sparse patches each alone)
    "nuclei (segmented once)": {"encoder": "nuclei", "encoder_kwargs": {"segment": "once"}},
}


def _embed(sdata, name: str, seed: int = 0) -> str:
    """Embed every spot with encoder ``name``; a randomly initialised encoder is drawn with ``seed``."""
    random = "random" in name
    key = "z_" + name.split()[0] + ("_macenko" if "macenko" in name else "") + ("_once" if "once" in name else "")
    key += f"_{seed}" if random else ""
    if key in sdata["table"].obsm:
        return key
    enc = ENCODERS[name].get("encoder", name)
    t0 = time.perf_counter()
    cp.pp.embed(
        sdata,
        encoder=enc,
        key_added=key,
        seed=seed if random else 0,
        encoder_kwargs=ENCODERS[name].get("encoder_kwargs"),
    )
    n = sdata["table"].n_obs
    print(f"embedded {n} spots with {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return key


def main() -> None:
    ap = experiment_args(__doc__, out="results/protocols", seeds=3)
    ap.add_argument("--folds", nargs="*", default=None, help="fold names (e.g. section=B4 patient=B); default all")
    ap.add_argument("--panels", nargs="*", default=None, help="panel names (top-250, HisToGene-727); default both")
    ap.add_argument("--encoders", nargs="*", default=list(ENCODERS))
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    args = ap.parse_args()
    runs = Runs(args.out, resume=args.resume, key=("encoder", "fold", "panel", "method", "seed"))

    sdata = cp.datasets.her2st()
    adata = sdata["table"]
    stereo = cp.datasets.her2st_proportions("major").reindex(adata.obs_names)
    panel_sets = nb_prototypes_and_panels(adata)
    if args.panels:
        panel_sets = {k: v for k, v in panel_sets.items() if k in args.panels}
    keys = {name: _embed(sdata, name) for name in args.encoders}
    # spots with little tissue (fat, glass), read by the nuclei encoder whatever encoder is benchmarked
    nuclei_key = keys.get("nuclei") or _embed(sdata, "nuclei")
    low = low_tissue(adata.obsm[nuclei_key])
    folds = [f for f in cp.tl.split(adata, by="patient")] + [f for f in cp.tl.split(adata, by="section")]
    if args.folds:
        folds = [f for f in folds if f.name in args.folds]
    for seed in range(args.seeds):
        for fold in folds:
            train, val, test = ((fold == r).to_numpy() for r in ("train", "validation", "test"))
            targets = f"targets_{fold.name}_{seed}"
            for panel, genes in panel_sets.items():
                cp.pp.select_genes(adata, genes=genes)
                for enc_name in args.encoders:
                    for method in args.methods:
                        if method == "ridge" and seed > 0:
                            continue  # closed form: no seed
                        if runs.done(enc_name, fold.name, panel, method, seed):
                            continue
                        if targets not in adata.obsm:  # the fold's targets: the training spots only
                            cp.pp.deconvolve(adata, regions=train, key_added=targets, seed=seed)
                        kw = dict(METHODS[method])
                        if kw.get("head") != "ridge":
                            kw["composition_key"] = targets
                        enc = ENCODERS[enc_name].get("encoder", enc_name)
                        # a random encoder's features are drawn anew with each seed (fit's seed seeds it)
                        key = _embed(sdata, enc_name, seed) if "random" in enc_name else keys[enc_name]
                        t0 = time.perf_counter()
                        model = cp.tl.fit(
                            adata, train=train, validation=val,
                            **fit_options(
                                encoder=enc, embedding_key=key, encoder_kwargs=ENCODERS[enc_name].get("encoder_kwargs"),
                                seed=seed, **kw,
                            ),
                        )  # fmt: skip
                        seconds = time.perf_counter() - t0
                        scores = held_out_scores(adata, model, genes, test, stereo, embedding_key=key)
                        row = {
                            "encoder": enc_name,
                            "protocol": "LOPO" if fold.name.startswith("patient") else "LOSO",
                            "fold": fold.name,
                            "panel": panel,
                            "method": method,
                            "seed": seed,
                            "spearman": scores.pop("spearman"),
                            "epochs": len(model.history),
                            "still_improving_at_cap": bool(
                                adata.uns["cpnn"]["fit"].get("still_improving_at_cap", False)
                            ),
                            "seconds": seconds,
                            **scores,
                        }
                        fat = test & low & stereo.notna().all(1).to_numpy()
                        if model.has_composition and fat.any():
                            mapped = to_stereoscope(adata.obsm["bench_proportions"].loc[fat])
                            row["low-tissue spots"] = int(fat.sum())
                            row["epithelial on low-tissue spots"] = float(mapped["Epithelial"].mean())
                            row["stereoscope epithelial on low-tissue spots"] = float(
                                stereo.loc[fat, "Epithelial"].mean()
                            )
                        runs.add(
                            row,
                            f"{enc_name} {fold.name} {panel} {method} seed {seed}: Spearman {row['spearman']:.3f} "
                            f"agreement {row.get('agreement', float('nan')):.2f} ({seconds:.0f} s)",
                        )
    runs.write("\n".join(summary(runs.frame())))


def summary(runs: pd.DataFrame) -> list[str]:
    """Per protocol and panel, one table: encoder x method, Spearman and agreement, folds and seeds counted."""
    lines = []
    order = {name: i for i, name in enumerate([*ENCODERS, *METHODS])}
    for (proto, panel), grp in runs.groupby(["protocol", "panel"], sort=False):
        out = []
        pairs = sorted(grp.groupby(["encoder", "method"], sort=False), key=lambda kv: [order.get(k, 99) for k in kv[0]])
        for (enc, method), g in pairs:
            per_fold = (
                g.groupby("fold")[["spearman", "agreement"]].mean(numeric_only=True)
                if "agreement" in g
                else g.groupby("fold")[["spearman"]].mean()
            )
            # the sd over seeds of the fold means, on the folds that every seed has reached (a partial
            # seed-major run would otherwise compare seeds over different folds)
            seeds_of = g.groupby("fold")["seed"].nunique()
            complete = seeds_of[seeds_of == g["seed"].nunique()].index
            per_seed = g[g["fold"].isin(complete)].groupby("seed")[["spearman"]].mean()
            r = {
                "encoder": enc,
                "method": method,
                "Spearman (+- sd over folds)": mean_sd(per_fold["spearman"]),
                "sd over seeds": f"{per_seed['spearman'].std(ddof=0):.3f}" if len(per_seed) > 1 else "-",
                "stereoscope agreement": mean_sd(per_fold["agreement"], 2)
                if "agreement" in per_fold and per_fold["agreement"].notna().any()
                else "-",
                "runs (folds, seeds)": f"{len(g)} ({g['fold'].nunique()}, {g['seed'].nunique()})",
            }
            out.append(r)
        lines += [f"### {proto}, {panel}", "", table(out), ""]
    col = "epithelial on low-tissue spots"
    fat = runs[(runs["fold"] == "patient=B") & runs[col].notna()] if col in runs else runs.iloc[:0]
    if not fat.empty:  # B4 held out across patients: its low-tissue spots
        out = []
        for (panel, enc, method), g in fat.groupby(["panel", "encoder", "method"]):
            out.append(
                {
                    "panel": panel,
                    "encoder": enc,
                    "method": method,
                    "predicted epithelial (+- sd over seeds)": mean_sd(g[col], 2),
                    "stereoscope": f"{g['stereoscope epithelial on low-tissue spots'].mean():.2f}",
                    "spots": int(g["low-tissue spots"].iloc[0]),
                    "seeds": g["seed"].nunique(),
                }
            )
        lines += ["### B4's low-tissue spots (patient=B fold), epithelial share", "", table(out), ""]
    return lines


if __name__ == "__main__":
    main()
