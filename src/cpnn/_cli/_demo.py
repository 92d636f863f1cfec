"""``cpnn demo``: the whole pipeline on HER2ST, with figures, in one command."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import CpnnError
from ._scripted import check_output

#: The figures the demo writes.
FIGURES = (
    "proportions.png",
    "dominant.png",
    "compare_proportions.png",
    "expression.png",
    "correlations.png",
    "prototypes.png",
    "history.png",
)
TRAIN, VALIDATION, TEST = ["C2", "C3", "C4", "C5"], ["C6"], "B4"


def _demo_figures(sdata, model, metrics, out: Path) -> list[Path]:
    """Composition maps, measured vs predicted markers, accuracy and training history as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import cpnn as cp

    paths = []
    markers = [g for g in ("ERBB2", "KRT19", "COL1A1", "CD74") if g in model.genes][:3]
    # the best-predicted genes, so that the figure also shows what the model gets right
    best = [g for g in metrics["spearman_mean"].sort_values(ascending=False).index if g not in markers][:1]
    draws = (
        lambda p: cp.pl.proportions(sdata, region=TEST, scale="shared", save=p, show=False),
        lambda p: cp.pl.dominant(sdata, region=TEST, save=p, show=False),
        lambda p: cp.pl.compare_proportions(
            sdata, keys=("cpnn_proportions", "deconvolution_B4"), region=TEST, save=p, show=False
        ),
        lambda p: cp.pl.expression(sdata, markers + best, region=TEST, save=p, show=False),
        lambda p: cp.pl.correlations(metrics, save=p, show=False),
        lambda p: cp.pl.prototypes(model, save=p, show=False),
        lambda p: cp.pl.history(model, save=p, show=False),
    )
    for name, draw in zip(FIGURES, draws, strict=True):
        draw(out / name)
        plt.close("all")
        paths.append(out / name)
    return paths


def _agreement(table, key: str) -> pd.Series:
    """Per-type Pearson over the held-out section's spots with the authors' stereoscope proportions."""
    import cpnn as cp
    from cpnn._core import columnwise_pearson
    from cpnn.datasets import WU2021_TO_STEREOSCOPE

    stereo = cp.datasets.her2st_proportions("major", sections=[TEST])
    props = table.obsm[key].reindex(stereo.index)
    mapped = props.T.groupby(lambda c: WU2021_TO_STEREOSCOPE.get(c, c)).sum().T
    ok = props.notna().all(1).to_numpy()
    types = [t for t in stereo.columns if t in mapped]
    r = columnwise_pearson(mapped.loc[ok, types].to_numpy(float), stereo.loc[ok, types].to_numpy(float))
    return pd.Series(r, index=types)


def run_demo(args: argparse.Namespace) -> int:
    """Fit on patient C, predict patient B, evaluate, and write the model, tables and figures."""
    import cpnn as cp

    out = Path(args.out)
    outputs = ["model.pt", "metrics_per_gene.csv", "table.h5ad", "B4_annotated.zarr", *FIGURES]
    earlier = [name for name in outputs if (out / name).exists()]
    if earlier and not args.force:
        raise CpnnError(
            f"--out {str(out)!r} holds the outputs of an earlier demo ({', '.join(earlier[:3])}, ...); "
            "pass --force to overwrite them, or another --out."
        )
    check_output(out / "model.pt", force=True)
    cp.settings.verbosity = 2
    t0 = time.time()
    print(f"cpnn {cp.__version__} demo: data from {cp.settings.datadir}, cache in {cp.settings.cachedir}")
    sdata = cp.datasets.her2st()
    table = sdata["table"]
    print(sdata)
    cp.pp.select_genes(sdata, n_top_genes=args.n_genes)
    cp.pp.build_prototypes(sdata, cp.datasets.wu2021_cid4465(), cell_type_key="celltype_major", method="nb")
    # composition targets: the training sections' own counts deconvolved with the same prototypes
    cp.pp.deconvolve(sdata, regions=TRAIN, seed=args.seed)
    model = cp.tl.fit(
        sdata,
        train=TRAIN,
        validation=VALIDATION,
        encoder=args.encoder,
        epochs=args.epochs,
        seed=args.seed,
        composition_key="cpnn_deconvolution",
    )
    cp.tl.predict(sdata, model, regions=[TEST])
    # what B4's own counts say, drawn next to what the image predicts (never seen by the fit)
    cp.pp.deconvolve(sdata, regions=[TEST], key_added="deconvolution_B4", seed=args.seed)
    metrics = cp.tl.evaluate(sdata, groupby="section")
    model_path = out / "model.pt"
    model.save(model_path)
    metrics.to_csv(out / "metrics_per_gene.csv")
    table.write_h5ad(out / "table.h5ad")
    # the predicted section as an annotated SpatialData (image, spots, table with predictions)
    zarr_path = out / "B4_annotated.zarr"
    if zarr_path.exists():
        shutil.rmtree(zarr_path)
    sdata.subset(["B4_image", "B4_spots"], filter_tables=True).write(zarr_path)
    summary = table.uns["cpnn"]["metrics"]["cpnn"]
    props = table.obsm["cpnn_proportions"].dropna()
    agree = _agreement(table, "cpnn_proportions")
    figures = _demo_figures(sdata, model, metrics, out)
    off = table.uns["cpnn"]["predict"].get("types_never_above") or []
    print()
    print(
        f"Trained on patient C (C2-C5, early stopping on C6; composition supervised by their deconvolved counts), "
        f"predicted patient B (B4): {len(props)} spots, {summary['n_genes']} genes"
    )
    print(
        f"  mean per-gene Spearman on B4: {summary['spearman_per_group_mean']:.3f} (Pearson {summary['pearson_per_group_mean']:.3f})"
    )
    print(
        f"  composition agreement with the authors' stereoscope proportions on B4: {np.nanmean(agree):.2f} "
        "(mean Pearson over types; " + ", ".join(f"{k} {v:.2f}" for k, v in agree.items()) + ")"
    )
    print(
        "  mean predicted composition on B4: "
        + ", ".join(f"{k} {v:.2f}" for k, v in props.mean().sort_values(ascending=False).items())
    )
    if off:
        print(f"  WARNING: cell type(s) {off} never exceed 1% of a B4 spot: the network switched them off")
    print(
        f"  model: {model_path}\n  per-gene metrics: {out / 'metrics_per_gene.csv'}\n  annotated table: {out / 'table.h5ad'}\n"
        f"  annotated SpatialData of B4: {zarr_path}"
    )
    print("  figures: " + ", ".join(str(f) for f in figures))
    print(f"done in {time.time() - t0:.0f} s")
    return 0
