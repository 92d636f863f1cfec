"""``cpnn demo``: the whole pipeline on HER2ST, with figures, in one command."""

from __future__ import annotations

import argparse
import difflib
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .._core import choose_threads, zarr_write_settings
from .._errors import CpnnError
from ._scripted import check_output

#: The figures the demo writes (maps over the H&E as JPEG: a photograph in PNG runs to several MB).
FIGURES = (
    "proportions.jpg",
    "dominant.jpg",
    "compare_proportions.jpg",
    "expression.jpg",
    "correlations.png",
    "prototypes.png",
    "history.png",
)
TRAIN, VALIDATION, TEST = ["C2", "C3", "C4", "C5"], ["C6"], "B4"


#: The compartments a pathologist reads, from the atlas's major types.
COMPARTMENTS = {
    "epithelium": ["Cancer Epithelial", "Normal Epithelial"],
    "immune": ["B-cells", "T-cells", "Myeloid", "Plasmablasts"],
    "stroma": ["CAFs", "PVL", "Endothelial"],
}


def _compartments(types: list[str]) -> dict[str, list[str]]:
    """:data:`COMPARTMENTS` restricted to the model's cell types."""
    groups = {g: [t for t in members if t in types] for g, members in COMPARTMENTS.items()}
    return {g: members for g, members in groups.items() if members}


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
        lambda p: cp.pl.proportions(sdata, region=TEST, save=p, show=False),
        lambda p: cp.pl.dominant(sdata, region=TEST, groups=_compartments(model.cell_types), save=p, show=False),
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


#: What each offline encoder can and cannot see, said before any number is read.
ENCODER_NOTES = {
    "handcrafted": (
        "hand-crafted colour and texture statistics of each 112 um patch (offline, no weights): they tell "
        "dense from loose tissue and stain from stain, but cannot count or tell cells apart, so the "
        "compositions follow tissue colour: over B4's fat they put about 0.4 of a spot in epithelium "
        "(stereoscope: 0.21; --encoder nuclei: 0.28). For real use pass a pathology foundation model (see "
        "docs/foundation_models.md)."
    ),
    "nuclei": (
        "nuclei detected and measured at 0.5 um per pixel (count, size, shape, stain, crowding) plus the "
        "colour/texture statistics (offline, no weights): closer to what a pathologist reads, but no cell "
        "is typed, so the compositions are still estimates. For real use pass a pathology foundation model "
        "(see docs/foundation_models.md)."
    ),
}


def _drop_prediction(table, key: str) -> None:
    """Remove a side prediction (another seed's) so that the written table holds the main one only."""
    table.layers.pop(key, None)
    for k in [k for k in table.obsm if k.startswith(f"{key}_")]:
        del table.obsm[k]
    table.obs.drop(columns=[c for c in table.obs.columns if c.startswith(f"{key}_")], inplace=True)
    table.var.drop(columns=[c for c in table.var.columns if c.startswith(f"{key}_")], inplace=True)
    for section in ("predictions", "metrics"):
        table.uns["cpnn"].get(section, {}).pop(key, None)


def _step(message: str, t0: float) -> None:
    print(f"[{time.time() - t0:4.0f} s] {message}", flush=True)


def _check_encoder(name: str) -> None:
    """Refuse an encoder name that is neither registered, a preset, nor a timm architecture."""
    import timm

    from ..models.encoders import ENCODERS, PRESETS

    if name in ENCODERS or name in PRESETS or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, [*ENCODERS, *PRESETS], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise CpnnError(
        f"--encoder {name!r} is not an encoder: {hint}pass one of {sorted([*ENCODERS])}, a foundation-model preset "
        f"({', '.join(sorted(PRESETS)[:4])}, ...) or a timm architecture (timm.list_models())."
    )


def run_demo(args: argparse.Namespace) -> int:
    """Fit on patient C, predict patient B, evaluate over several seeds, and write the model, tables and figures."""
    import cpnn as cp

    out = Path(args.out)
    outputs = ["model.pt", "metrics_per_gene.csv", "table.h5ad", "B4_annotated.zarr", *FIGURES]
    earlier = [name for name in outputs if (out / name).exists()]
    if earlier and not args.force:
        raise CpnnError(
            f"--out {str(out)!r} holds the outputs of an earlier demo ({', '.join(earlier[:3])}, ...); "
            "pass --force to overwrite them, or another --out."
        )
    if args.seeds < 1:
        raise CpnnError(f"--seeds {args.seeds}: train at least one seed.")
    if args.epochs is not None and args.epochs < 1:
        raise CpnnError(f"--epochs {args.epochs}: train at least one epoch (or leave it out for the preset's cap).")
    _check_encoder(args.encoder)  # before a minute of loading
    check_output(out / "model.pt", force=True)
    cp.settings.verbosity = 1  # cpnn's warnings; the steps are printed below
    t0 = time.time()
    seeds = [args.seed + k for k in range(args.seeds)]
    print(
        f"cpnn {cp.__version__} demo: HER2ST breast cancer (Andersson et al. 2021). Train on patient C "
        f"(C2-C5, early stopping on C6), predict patient B (B4), {len(seeds)} seed(s)."
    )
    print(f"  data: {cp.settings.datadir}; cache: {cp.settings.cachedir}")
    threads, why = choose_threads(cp.settings.n_jobs, deterministic=cp.settings.deterministic)
    print(f"  CPU threads: {threads} ({why}; each step measures the idle cores again)")
    print(
        f"  encoder {args.encoder!r}: {ENCODER_NOTES.get(args.encoder, 'a timm architecture, untrained unless you pass weights')}"
    )
    sdata = cp.datasets.her2st()
    table = sdata["table"]
    _step(f"loaded 6 sections: {table.n_obs} spots x {table.n_vars} genes, H&E at 0.69 um/px", t0)
    cp.pp.select_genes(sdata, n_top_genes=args.n_genes)
    cp.pp.build_prototypes(sdata, cp.datasets.wu2021_cid4465(), cell_type_key="celltype_major", method="nb")
    types = list(table.uns["cpnn"]["cell_types"])
    _step(f"panel of {args.n_genes} genes; NB prototypes of {len(types)} cell types from the CID4465 atlas cells", t0)
    scores, models = [], {}
    for k, seed in enumerate(seeds):
        key = "cpnn" if seed == seeds[0] else f"seed{seed}"
        t_seed = time.time()
        # composition targets: the training spots' own counts, deconvolved with the same prototypes
        model = cp.tl.fit(
            sdata, train=TRAIN, validation=VALIDATION, encoder=args.encoder, seed=seed,
            train_kwargs={} if args.epochs is None else {"epochs": args.epochs},
        )  # fmt: skip
        fit = table.uns["cpnn"]["fit"]
        if fit["stop_reason"] == "interrupted":  # Ctrl-C: no score, no later seed, no outputs under the usual names
            _step(f"seed {seed}: training interrupted after {len(model.history)} epochs; no outputs written", t0)
            return 130
        cp.tl.predict(sdata, model, regions=[TEST], key_added=key)
        df = cp.tl.evaluate(sdata, layer=key, groupby="section")
        scores.append(float(df[f"spearman_{TEST}"].mean()))
        state = "still improving at the cap: raise --epochs" if fit["still_improving_at_cap"] else "converged"
        _step(
            f"seed {seed}: {len(model.history)} epochs (best {fit['best_epoch']}, {state}); "
            f"B4 Spearman {scores[-1]:.3f}",
            t0,
        )
        models[seed] = model
        if key != "cpnn":
            _drop_prediction(table, key)
        left = len(seeds) - k - 1
        if left:  # the first seed also embedded the patches and made the targets: later ones take less
            took = time.time() - t_seed
            print(
                f"  {left} more seed(s): about {left * took:.0f} s at most "
                f"(this one took {took:.0f} s; done by {time.strftime('%H:%M', time.localtime(time.time() + left * took))})",
                flush=True,
            )
    model = models[seeds[0]]
    cp.tl.predict(sdata, model, regions=[TEST])  # the first seed's model is the one saved and drawn
    # what B4's own counts say, drawn next to what the image predicts (never seen by the fit)
    cp.pp.deconvolve(sdata, regions=[TEST], key_added="deconvolution_B4", seed=args.seed)
    metrics = cp.tl.evaluate(sdata, groupby="section")
    cp.pp.proportions_to_obs(sdata)  # the composition as obs columns, for spatialdata-plot
    model_path = out / "model.pt"
    model.save(model_path)
    metrics.to_csv(out / "metrics_per_gene.csv")
    table.write_h5ad(out / "table.h5ad")
    # the predicted section as an annotated SpatialData (image, spots, table with predictions)
    zarr_path = out / "B4_annotated.zarr"
    if zarr_path.exists():
        shutil.rmtree(zarr_path)
    with zarr_write_settings():
        sdata.subset(["B4_image", "B4_spots"], filter_tables=True).write(zarr_path)
    summary = table.uns["cpnn"]["metrics"]["cpnn"]
    props = table.obsm["cpnn_proportions"].dropna()
    agree = _agreement(table, "cpnn_proportions")
    figures = _demo_figures(sdata, model, metrics, out)
    off = table.uns["cpnn"]["predict"].get("types_never_above") or []
    _step("wrote the model, tables and figures", t0)
    print()
    spread = (
        f" +- {np.std(scores):.3f} (sd over {len(scores)} seeds; seed {seeds[0]} alone: {scores[0]:.3f})"
        if len(scores) > 1
        else " (one seed: pass --seeds 3 for the spread)"
    )
    print(f"Held-out patient B, section B4: {len(props)} spots, {summary['n_genes']} genes")
    print(f"  mean per-gene Spearman: {np.mean(scores):.3f}{spread}")
    print(
        f"  composition agreement with the authors' stereoscope proportions: {np.nanmean(agree):.2f} "
        "(mean Pearson over types; " + ", ".join(f"{k} {v:.2f}" for k, v in agree.items()) + ")"
    )
    print(
        "  mean predicted composition: "
        + ", ".join(f"{k} {v:.2f}" for k, v in props.mean().sort_values(ascending=False).items())
    )
    print("  the reference has no adipocyte type: fat is split among the types above (see dominant.jpg)")
    if off:
        print(f"  WARNING: cell type(s) {off} never exceed 1% of a B4 spot: the network switched them off")
    print(
        f"Outputs in {out}/: model.pt, metrics_per_gene.csv, table.h5ad (layers['cpnn'] at the median training "
        "depth), B4_annotated.zarr,"
    )
    print("  figures: " + ", ".join(f.name for f in figures))
    print(f"done in {time.time() - t0:.0f} s")
    return 0
