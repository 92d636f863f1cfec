"""Pseudo-bulk slide-level benchmark on real HER2ST: CPNN (mean over tiles) vs direct mean pooling.

Run (each preset's own recipe, 3 training seeds per method: 730 s on one thread of the 2-core
development machine on 2026-12-06; ``--resume`` keeps the fits already written to ``--out``):
    CPNN_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/pseudobulk.py --out results/pseudobulk --resume
    CPNN_DATA_DIR=../shared/data python benchmarks/pseudobulk.py --seeds 1 --epochs 150   # a quick look: a 150-epoch cap

Each imaged section is cut into ``--regions`` tissue regions (k-means on the spot coordinates);
each region is a "slide" whose bulk expression is the sum of its spots' counts and whose image is
the tissue tiles of :func:`cpnn.pp.tile` lying within one spot pitch of its spots. Leave one
patient out (C -> B4 and B4 -> C); early stopping and ridge's alpha use validation regions of
the training side only (C6's regions, or a quarter of B4's). Metric: per-gene Spearman (and
Pearson) across the held-out "slides" on log-normalised expression, averaged over the panel
(top ``--n-top`` genes by mean on the training slides). Methods share the tiles, the encoder
and the panel: CPNN at slide level (the paper: mean over tiles of the corrected expression),
the direct head on mean-pooled tile embeddings, ridge on mean-pooled embeddings, the training
mean. CPNN runs twice: the paper's model (``preset="paper"``) and cpnn's defaults. CPNN's slide
compositions are compared with the mean stereoscope proportions of the region's spots.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, fit_options, previous_runs, table

import cpnn as cp
from cpnn._core import columnwise_pearson, columnwise_spearman, lognorm
from cpnn.pp._genes import normalized_mean

#: Spot centres of legacy ST lie 200 um apart; a tile within this distance of a spot joins its region.
PITCH_UM = 200.0


def pseudobulk(sdata, *, n_regions: int, seed: int) -> ad.AnnData:
    """Regions of each section as bulk samples; labels tiles (``obs["slide"]``) and spots (``obs["pseudo_slide"]``)."""
    spots, tiles = sdata["table"], sdata["cpnn_tiles"]
    tiles.obs["slide"] = "none"
    spots.obs["pseudo_slide"] = "none"
    rows, counts = [], []
    for section in spots.obs["section"].cat.categories:
        sel = (spots.obs["section"] == section).to_numpy()
        um = spots.uns["cpnn_spatial"]["um_per_px"][f"{section}_spots"]
        xy = np.asarray(spots.obsm["spatial"])[sel] * um
        labels = KMeans(n_regions, n_init=10, random_state=seed).fit_predict(xy)
        names = np.array([f"{section}_r{k:02d}" for k in labels])
        spots.obs.loc[spots.obs_names[sel], "pseudo_slide"] = names
        X = spots.X[np.flatnonzero(sel)]
        tsel = (tiles.obs["image"].astype(str) == f"{section}_image").to_numpy()
        tum = tiles.uns["cpnn_spatial"]["um_per_px"][f"cpnn_tiles_{section}_image"]
        txy = np.asarray(tiles.obsm["spatial"])[tsel] * tum
        d = np.hypot(*(txy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
        near = d.argmin(1)
        slide = np.where(d.min(1) <= PITCH_UM, names[near], "none")
        tiles.obs.loc[tiles.obs_names[tsel], "slide"] = slide
        for k in range(n_regions):
            name = f"{section}_r{k:02d}"
            counts.append(np.asarray(X[labels == k].sum(0)).ravel())
            rows.append(
                {
                    "name": name,
                    "section": section,
                    "patient": section[0],
                    "n_spots": int((labels == k).sum()),
                    "n_tiles": int((slide == name).sum()),
                }
            )
    obs = pd.DataFrame(rows).set_index("name")
    bulk = ad.AnnData(sparse.csr_matrix(np.array(counts, dtype=np.float32)), obs=obs, var=spots.var[[]].copy())
    return bulk[bulk.obs["n_tiles"] > 0].copy()


def score(fold: str, method: str, pred: np.ndarray, truth: np.ndarray, n_train: int, peak: Peak, epochs: int = 0):
    """One result row: per-gene Spearman and Pearson across the held-out slides, averaged over genes."""
    sp, pe = columnwise_spearman(pred, truth), columnwise_pearson(pred, truth)
    row = {
        "fold": fold,
        "method": method,
        "spearman": float(np.nanmean(sp)) if np.isfinite(sp).any() else np.nan,
        "pearson": float(np.nanmean(pe)) if np.isfinite(pe).any() else np.nan,
        "n_train": n_train,
        "n_test": len(truth),
        "epochs": epochs,
        "seconds": peak.seconds,
    }
    print(f"  {fold} | {method:<24} Spearman {row['spearman']:.3f} ({peak.seconds:.0f} s)", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/pseudobulk")
    ap.add_argument("--regions", type=int, default=16, help="pseudo-slides per section")
    ap.add_argument("--encoder", default="handcrafted", help="'handcrafted' or a timm architecture (frozen)")
    ap.add_argument("--weights", default=None, help="local weights for --encoder")
    ap.add_argument("--epochs", type=int, default=None, help="epoch cap (default: each preset's; 1000 for both)")
    ap.add_argument("--n-top", type=int, default=250)
    ap.add_argument("--max-patches", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0, help="seed of the regions (k-means)")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per method (ridge is deterministic: one)")
    ap.add_argument("--resume", action="store_true", help="keep the fits already in --out and run the rest")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv, agree_csv = out / "pseudobulk.csv", out / "agreement.csv"
    rows, done = previous_runs(csv, resume=args.resume, key=("fold", "method", "seed"))
    agree, _ = previous_runs(agree_csv, resume=args.resume, key=("fold", "method", "seed"))
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    t0 = time.time()

    sdata = cp.datasets.her2st()
    with Peak() as p_tile:
        cp.pp.tile(sdata)
    tiles = sdata["cpnn_tiles"]
    bulk = pseudobulk(sdata, n_regions=args.regions, seed=args.seed)
    print(
        f"{tiles.n_obs} tiles in {p_tile.seconds:.1f} s; {bulk.n_obs} pseudo-slides, "
        f"median {int(bulk.obs['n_spots'].median())} spots and {int(bulk.obs['n_tiles'].median())} tiles each",
        flush=True,
    )
    stereo = cp.datasets.her2st_proportions("major").reindex(sdata["table"].obs_names)
    ref = cp.datasets.wu2021_cid4465()
    cp.pp.build_prototypes(bulk, ref, cell_type_key="celltype_major", method="nb")
    has_proto = bulk.var["cpnn_in_reference"].to_numpy(bool)
    enc = {"encoder": args.encoder, "encoder_weights": args.weights}

    folds = {
        "C -> B4": (bulk.obs["patient"] == "C").to_numpy(),
        "B4 -> C": (bulk.obs["patient"] == "B").to_numpy(),
    }
    for fold, train_side in folds.items():
        test = ~train_side
        if fold == "C -> B4":
            val = train_side & (bulk.obs["section"] == "C6").to_numpy()
        else:  # a quarter of B4's regions, fixed by name
            val = train_side & (np.arange(bulk.n_obs) % 4 == 0)
        train = train_side & ~val
        means = pd.Series(normalized_mean(bulk.X[np.flatnonzero(train)]), index=bulk.var_names)[has_proto]
        genes = list(means.sort_values(ascending=False).index[: args.n_top])
        cp.pp.select_genes(bulk, genes=genes)
        y = lognorm(bulk[:, genes].X.toarray())

        methods = (
            ("CPNN, paper (slide level)", "cpnn", "paper"),
            ("CPNN, cpnn defaults", "cpnn", "cpnn"),
            ("direct (mean pooling)", "direct", "cpnn"),
            ("ridge (mean pooling)", "ridge", "paper"),
        )
        for method, head, preset in methods:
            for seed in range(1 if head == "ridge" else args.seeds):
                if (fold, method, seed) in done:
                    continue
                with Peak() as p:
                    model = cp.tl.fit(
                        bulk,
                        slides=sdata,
                        train=train,
                        validation=val,
                        preset=preset,
                        **fit_options(head, epochs=args.epochs, max_patches=args.max_patches, seed=seed, **enc),
                    )
                    cp.tl.predict(bulk, model, slides=sdata, regions=test, key_added="bench")
                pred = bulk[test, genes].layers["bench"].toarray()
                rows.append(
                    {
                        "seed": seed,
                        **score(fold, method, lognorm(pred), y[test], int(train.sum()), p, len(model.history)),
                    }
                )
                print(f"{fold} {method} seed {seed}: Spearman {rows[-1]['spearman']:.3f}", flush=True)
                if model.has_composition:
                    props = bulk.obsm["bench_proportions"].loc[test]
                    agree.append(
                        {
                            "fold": fold,
                            "method": method,
                            "seed": seed,
                            **region_agreement(sdata["table"], props, stereo),
                        }
                    )
                    pd.DataFrame(agree).to_csv(agree_csv, index=False)
                pd.DataFrame(rows).to_csv(csv, index=False)  # after every fit: --resume goes on from here
        # the mean predictor
        with Peak() as p:
            pred = np.repeat(y[train].mean(0, keepdims=True), test.sum(), 0)
        if (fold, "training mean", 0) not in done:
            rows.append({"seed": 0, **score(fold, "training mean", pred, y[test], int(train.sum()), p)})

    res = pd.DataFrame(rows)
    res.to_csv(csv, index=False)
    seed_means = res.groupby(["method", "fold"], sort=False)["spearman"]
    summary = seed_means.mean().unstack("fold")
    summary["mean"] = summary.mean(1)
    spread = seed_means.std().unstack("fold").fillna(0.0)
    text = [
        f"Pseudo-bulk HER2ST, {args.regions} regions per section, encoder {args.encoder}, top-{args.n_top} panel; "
        "per-gene Spearman across held-out pseudo-slides, mean over genes (mean +- sd over training seeds).",
        "",
        table(
            [
                {
                    "method": m,
                    **{c: f"{v:.3f} +- {spread.loc[m, c]:.3f}" if c in spread else f"{v:.3f}" for c, v in r.items()},
                }
                for m, r in summary.iterrows()
            ]
        ),
        "",
        table(rows),
    ]
    if agree:
        text += ["", "CPNN slide compositions vs mean stereoscope proportions of the region's spots (Pearson):", ""]
        text.append(table(agree))
    (out / "tables.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    print(f"total {time.time() - t0:.0f} s")


def region_agreement(spots, props: pd.DataFrame, stereo: pd.DataFrame) -> dict[str, float]:
    """Pearson across held-out regions between CPNN's mapped proportions and the regions' stereoscope means."""
    from her2st import to_stereoscope

    mean_stereo = stereo.groupby(spots.obs["pseudo_slide"].to_numpy()).mean().reindex(props.index)
    mapped = to_stereoscope(props)
    out = {}
    for t in mean_stereo.columns:
        if t in mapped:
            a = mapped[t].to_numpy(float)[:, None]
            b = mean_stereo[t].to_numpy(float)[:, None]
            out[t] = float(columnwise_pearson(a, b)[0])
    out["mean"] = float(np.nanmean(list(out.values())))
    return out


if __name__ == "__main__":
    main()
