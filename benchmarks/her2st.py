"""HER2ST benchmark: CPNN against its ablations and baselines, labelled by protocol, panel and encoder.

Run (full, < 30 min on 2 CPU cores):
    CPNN_DATA_DIR=../shared/data python benchmarks/her2st.py --out results/her2st
Quick check (< 5 min): add ``--quick`` (LOPO C -> B4, top-250 panel, hand-crafted features, every
head). Other encoders: ``--encoder NAME [--weights FILE]``.

Scope of the full run (what fits in 30 CPU minutes): every head, ridge and the training mean in
LOPO on the top-250 panel with both frozen encoders; CPNN (both prototype sources), direct, ridge
and the mean everywhere else (LOSO, HisToGene panel); the encoder trained end to end only for
LOPO C -> B4 on the top-250 panel, CPNN and direct, at reduced resolution and epochs.

Protocols: leave-one-section-out over the six imaged sections (5 of 6 folds keep the held-out
section's patient in training, and the label says so) and leave-one-patient-out (C -> B4,
B4 -> C). Early stopping watches a validation section of the training side (or a held-out block
of B4 when B4 is the only training section); the held-out section is never looked at before
the final evaluation. Every method of a fold uses the same encoder, patches, panel and spots.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, fit_options, mean_sd, table

import cpnn as cp
from cpnn._core import columnwise_pearson, lognorm
from cpnn.pp._genes import normalized_mean

#: cpnn's reference cell types -> the stereoscope (atlas) major types of her2st_proportions.
TO_STEREOSCOPE = cp.datasets.WU2021_TO_STEREOSCOPE
HEADS = {
    # method: (fit kwargs, prototype set)
    "CPNN (nb, CID4465)": ({"head": "cpnn"}, "nb"),
    "CPNN (atlas profiles)": ({"head": "cpnn"}, "atlas"),
    "CPNN frozen prototypes": ({"head": "cpnn", "prototypes": "freeze"}, "nb"),
    "CPNN no correction": ({"head": "cpnn", "correction": False}, "nb"),
    "direct": ({"head": "direct"}, None),
    "ridge": ({"head": "ridge"}, None),
}
MAIN_METHODS = ("CPNN (nb, CID4465)", "CPNN (atlas profiles)", "direct", "ridge")
PROTO_KEYS = {"nb": "proto_nb", "atlas": "proto_atlas"}


def dense(adata, genes, mask=None, layer=None) -> np.ndarray:
    """Counts (``X``) or a prediction ``layer`` of the ``mask`` spots over ``genes``, as a dense array."""
    view = adata[mask if mask is not None else slice(None), genes]
    x = view.layers[layer] if layer is not None else view.X
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def panels(adata, nb_types_ok: pd.Index, atlas: pd.DataFrame, *, n_top: int) -> dict[str, list[str]]:
    """Both panels restricted to genes every method can predict (in the table, the reference and the atlas)."""
    candidates = adata.var_names[adata.var_names.isin(nb_types_ok) & adata.var_names.isin(atlas.index)]
    score = pd.Series(normalized_mean(adata[:, candidates].X), index=candidates)
    top = list(score.sort_values(ascending=False).index[:n_top])
    histo = [g for g in cp.datasets.histogene_genes() if g in set(candidates)]
    return {f"top-{n_top}": top, f"HisToGene-{len(histo)}": histo}


def nb_prototypes_and_panels(adata, *, n_top: int = 250) -> dict[str, list[str]]:
    """NB prototypes of the CID4465 cells (``celltype_major``) into ``adata``, and both panels (see :func:`panels`)."""
    cp.pp.build_prototypes(adata, cp.datasets.wu2021_cid4465(), cell_type_key="celltype_major", method="nb")
    ok = adata.var_names[adata.var["cpnn_in_reference"].to_numpy(bool)]
    return panels(adata, ok, cp.datasets.wu2021_profiles(), n_top=n_top)


def head_training_inputs(*, nb_panel: bool = False) -> tuple:
    """What the head-training benchmarks fit on: HER2ST with hand-crafted embeddings (``obsm["z_h"]``),
    a top-250 panel with prototypes, and NB targets of the training spots (``obsm["targets"]``).

    ``nb_panel``: the NB-prototype panel of :func:`nb_prototypes_and_panels`; else ``select_genes`` and
    the default prototypes. Returns ``(sdata, adata, train C2-C5, validation C6)``.
    """
    sdata = cp.datasets.her2st()
    adata = sdata["table"]
    if nb_panel:
        cp.pp.select_genes(adata, genes=nb_prototypes_and_panels(adata)["top-250"])
    else:
        cp.pp.select_genes(adata, n_top_genes=250)
        cp.pp.build_prototypes(adata, cp.datasets.wu2021_cid4465(), cell_type_key="celltype_major")
    cp.pp.embed(sdata, encoder="handcrafted", key_added="z_h")
    section = adata.obs["section"].astype(str)
    train = section.isin(["C2", "C3", "C4", "C5"]).to_numpy()
    val = (section == "C6").to_numpy()
    cp.pp.deconvolve(adata, regions=train, key_added="targets", seed=0)
    return sdata, adata, train, val


def evaluate_fold(adata, layer, genes, test, method_label) -> dict:
    df = cp.tl.evaluate(adata, layer=layer, genes=genes, spots=test, groupby="section")
    per_section = [c for c in df.columns if c.startswith("spearman_") and c not in ("spearman_mean", "spearman_pooled")]
    truth = lognorm(dense(adata, genes, test))
    pred = lognorm(dense(adata, genes, test, layer))
    out = {
        "method": method_label,
        "spearman_pooled": float(df["spearman_pooled"].mean()),
        "pearson_pooled": float(df["pearson_pooled"].mean()),
        "rmse": float(np.sqrt(((pred - truth) ** 2).mean())),
        "n_nan_genes": int(df[per_section].isna().any(axis=1).sum()),
    }
    sections = [c.removeprefix("spearman_") for c in per_section]
    return out, {s: (float(df[f"spearman_{s}"].mean()), float(df[f"pearson_{s}"].mean())) for s in sections}


def put_layer(adata, layer, genes, mask, values) -> None:
    """Write predictions (expression scale) for the panel into a sparse layer, zero elsewhere."""
    full = sparse.lil_matrix(adata.shape, dtype=np.float32)
    cols = adata.var_names.get_indexer(genes)
    rows = np.flatnonzero(mask)
    full[np.ix_(rows, cols)] = values.astype(np.float32)
    adata.layers[layer] = full.tocsr()


def low_tissue(z_nuclei) -> np.ndarray:
    """Spots with little tissue (fat, glass): a tissue fraction below 0.5 in the nuclei encoder's embedding."""
    from cpnn.models.encoders._nuclei import MORPHOMETRY

    return np.asarray(z_nuclei)[:, MORPHOMETRY.index("tissue_fraction")] < 0.5


def to_stereoscope(props: pd.DataFrame) -> pd.DataFrame:
    """Proportions (spots x cpnn cell types) summed into stereoscope's types (:data:`TO_STEREOSCOPE`)."""
    return props.T.groupby(lambda c: TO_STEREOSCOPE.get(c, c)).sum().T


def agreement(adata, props: pd.DataFrame, stereo: pd.DataFrame, test: np.ndarray) -> dict[str, float]:
    """Per stereoscope type: Pearson over held-out spots between cpnn's proportions (mapped) and stereoscope's."""
    names = adata.obs_names[test]
    mapped = to_stereoscope(props.loc[names])
    out = {}
    for t in stereo.columns:
        if t in mapped:
            a, b = mapped[t].to_numpy(float)[:, None], stereo.loc[names, t].to_numpy(float)[:, None]
            out[t] = float(columnwise_pearson(a, b)[0])
    return out


def held_out_scores(adata, model, genes, test, stereo: pd.DataFrame, *, embedding_key: str) -> dict:
    """A fold's held-out scores: mean over test sections of the mean per-gene Spearman; agreement with stereoscope.

    ``agreement``: mean over types of :func:`agreement` (and ``"r <type>"`` each), cpnn heads only.
    """
    cp.tl.predict(adata, model, regions=test, key_added="bench", embedding_key=embedding_key)
    df = cp.tl.evaluate(adata, layer="bench", genes=genes, spots=test, groupby="section")
    cols = [c for c in df.columns if c.startswith("spearman_") and c not in ("spearman_mean", "spearman_pooled")]
    out = {"spearman": float(np.nanmean([df[c].mean() for c in cols]))}
    if model.has_composition:
        a = agreement(adata, adata.obsm["bench_proportions"], stereo, test)
        out["agreement"] = float(np.nanmean(list(a.values())))
        out.update({f"r {k}": v for k, v in a.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/her2st", help="results folder (CSVs, figure, tables.md)")
    ap.add_argument("--quick", action="store_true", help="LOPO C -> B4, top-250, hand-crafted features only")
    ap.add_argument("--encoder", default="resnet18", help="timm architecture for the frozen/fine-tuned rows")
    ap.add_argument("--weights", default=None, help="local pretrained weights for --encoder")
    ap.add_argument("--epochs", type=int, default=120, help="head epochs at most (early stopping, patience 20)")
    ap.add_argument("--finetune-epochs", type=int, default=5, help="epochs of end-to-end training (0: skip)")
    ap.add_argument("--finetune-px", type=int, default=64, help="input pixels of the fine-tuned encoder")
    ap.add_argument("--n-top", type=int, default=250)
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

    # prototypes over every table gene, once: the panel only picks rows
    cp.pp.build_prototypes(adata, ref, cell_type_key="celltype_major", method="nb", key_added=PROTO_KEYS["nb"])
    cp.pp.build_prototypes(adata, atlas, cell_type_map=atlas.attrs["cell_type_map"], key_added=PROTO_KEYS["atlas"])
    nb_ok = adata.var_names[adata.var[f"{PROTO_KEYS['nb']}_in_reference"].to_numpy(bool)]
    panel_sets = panels(adata, nb_ok, atlas, n_top=args.n_top)

    # encoders: frozen ones embed every spot once; the fine-tuned one trains per fold
    enc_label = f"{args.encoder} ({'weights ' + Path(args.weights).name if args.weights else 'random init'})"
    encoders = {"hand-crafted": {"encoder": "handcrafted"}}
    if not args.quick:
        encoders[f"{enc_label}, frozen"] = {"encoder": args.encoder, "encoder_weights": args.weights}
    embed_cost = []
    for label, kw in encoders.items():
        with Peak() as p:
            cp.pp.embed(sdata, **kw, seed=args.seed, key_added=f"z_{kw['encoder']}")
        embed_cost.append({"encoder": label, "spots": adata.n_obs, "seconds": p.seconds, "peak MiB": p.added})

    protocols = {
        "LOPO": cp.tl.split(adata, by="patient"),
        "LOSO, same patient in train": cp.tl.split(adata, by="section"),
    }
    if args.quick:
        protocols = {"LOPO": [f for f in protocols["LOPO"] if f.attrs["test"] == ["B"]]}
        panel_sets = dict(list(panel_sets.items())[:1])
        args.finetune_epochs = 0
    first_panel = next(iter(panel_sets))
    rows, per_section, agree = [], [], []
    # the published model (and direct without context), as the tables in docs/benchmarks.md
    fit_kw = {"epochs": args.epochs, "patience": 20, "seed": args.seed, "preset": "paper"}

    def record(where: dict, method: str, test: np.ndarray, genes: list[str], peak: Peak, epochs: int) -> None:
        res, secs = evaluate_fold(adata, "bench", genes, test, method)
        if method == "training mean":  # one value for every spot: correlations are undefined
            res.update(spearman_pooled=np.nan, pearson_pooled=np.nan)
            secs = {k: (np.nan, np.nan) for k in secs}
        rows.append({**where, **res, "seconds": peak.seconds, "peak_mib": peak.added, "epochs_run": epochs})
        per_section.extend(
            {**where, "method": method, "section": s, "spearman": sp, "pearson": pe} for s, (sp, pe) in secs.items()
        )
        print(
            f"  {where['panel']:>15} | {where['encoder'][:34]:<34} | {method:<24} "
            f"pooled Spearman {res['spearman_pooled']:.3f} ({peak.seconds:.0f} s, {epochs} epochs)",
            flush=True,
        )

    for proto, folds in protocols.items():
        for fold in folds:
            train, val, test = ((fold == r).to_numpy() for r in ("train", "validation", "test"))
            print(f"{proto} | {fold.name} (validation {', '.join(fold.attrs['validation'])})", flush=True)
            for panel, genes in panel_sets.items():
                cp.pp.select_genes(adata, genes=genes)
                y = lognorm(dense(adata, genes))
                for enc, kw in encoders.items():
                    where = {"protocol": proto, "fold": fold.name, "panel": panel, "encoder": enc}
                    zkey = f"z_{kw['encoder']}"
                    # the paper's ablations in LOPO on the paper's panel; elsewhere the main methods
                    full = panel == first_panel and proto == "LOPO"
                    methods = HEADS if full else {k: HEADS[k] for k in MAIN_METHODS}
                    for method, (hkw, pset) in methods.items():
                        # the package's own fit/predict on the cached embedding
                        with Peak() as p:
                            model = cp.tl.fit(
                                adata,
                                train=train,
                                validation=val,
                                **fit_options(
                                    prototypes_key=PROTO_KEYS.get(pset, "cpnn_prototypes"),
                                    embedding_key=zkey,
                                    **kw,
                                    **hkw,
                                    **fit_kw,
                                ),
                            )
                            cp.tl.predict(adata, model, regions=test, key_added="bench", embedding_key=zkey)
                        record(where, method, test, genes, p, 0 if method == "ridge" else len(model.history))
                        if method in MAIN_METHODS[:2]:
                            a = agreement(adata, adata.obsm["bench_proportions"], stereo, test)
                            agree.append({**where, "method": method, **a})
                    # the training mean on the same spots
                    with Peak() as p:
                        pred = np.repeat(y[train].mean(0, keepdims=True), test.sum(), axis=0)
                        put_layer(adata, "bench", genes, test, np.expm1(np.clip(pred, 0, None)))
                    record(where, "training mean", test, genes, p, 0)
            # end-to-end training of the encoder from its initialisation: costly on CPU, so only the
            # paper's panel, the C -> B4 fold, and the two heads that matter
            if args.finetune_epochs and proto == "LOPO" and fold.attrs["test"] == ["B"]:
                genes = panel_sets[first_panel]
                cp.pp.select_genes(adata, genes=genes)
                enc = f"{enc_label}, trained end to end ({args.finetune_px} px, {args.finetune_epochs} epochs)"
                where = {"protocol": proto, "fold": fold.name, "panel": first_panel, "encoder": enc}
                for method in ("CPNN (nb, CID4465)", "direct"):
                    hkw, pset = HEADS[method]
                    with Peak() as p:
                        model = cp.tl.fit(
                            sdata,
                            train=train,
                            validation=val,
                            finetune=True,
                            **fit_options(
                                encoder=args.encoder,
                                encoder_weights=args.weights,
                                patch_px=args.finetune_px,
                                prototypes_key=PROTO_KEYS.get(pset, "cpnn_prototypes"),
                                epochs=args.finetune_epochs,
                                batch_size=64,
                                patience=args.finetune_epochs,
                                seed=args.seed,
                                preset="paper",
                                **hkw,
                            ),
                        )
                        cp.tl.predict(sdata, model, regions=test, key_added="bench")
                    record(where, method, test, genes, p, len(model.history))

    runs = pd.DataFrame(rows)
    sections = pd.DataFrame(per_section)
    agreement_df = pd.DataFrame(agree)
    runs.to_csv(out / "runs.csv", index=False)
    sections.to_csv(out / "per_section.csv", index=False)
    agreement_df.to_csv(out / "stereoscope_agreement.csv", index=False)

    lines = [
        f"# HER2ST benchmark ({time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{'quick' if args.quick else 'full'}, {time.time() - t_start:.0f} s)",
        "",
        f"Command: `python benchmarks/her2st.py {' '.join(sys.argv[1:])}`",
        f"Panels: {', '.join(f'{k} ({len(v)} genes)' for k, v in panel_sets.items())}; "
        "mean per-gene correlation on log1p CP10k over the panel, per held-out section then mean +- sd "
        "over sections; pooled = across all held-out spots of a fold, mean over folds. RMSE on log1p CP10k. "
        "Cost: wall seconds summed over folds (fit + predict), largest peak MiB above start.",
        "",
    ]
    for proto in protocols:
        sec = sections[sections["protocol"] == proto]
        run = runs[runs["protocol"] == proto]
        trows = []
        for (enc, method), grp in sec.groupby(["encoder", "method"], sort=False):
            r = {"encoder": enc, "method": method}
            for panel in panel_sets:
                g = grp[grp["panel"] == panel]
                rr = run[(run["encoder"] == enc) & (run["method"] == method) & (run["panel"] == panel)]
                if len(g) and g["spearman"].isna().all():
                    r[f"{panel} Spearman"] = r[f"{panel} Pearson"] = "n/a (constant)"
                    r[f"{panel} pooled Spearman"] = "n/a"
                    r[f"{panel} RMSE"] = f"{rr['rmse'].mean():.3f}"
                elif len(g):
                    r[f"{panel} Spearman"] = mean_sd(g["spearman"])
                    r[f"{panel} Pearson"] = f"{g['pearson'].mean():.3f}"
                    r[f"{panel} pooled Spearman"] = f"{rr['spearman_pooled'].mean():.3f}"
                    r[f"{panel} RMSE"] = f"{rr['rmse'].mean():.3f}"
                else:
                    r[f"{panel} Spearman"] = r[f"{panel} Pearson"] = r[f"{panel} pooled Spearman"] = "-"
                    r[f"{panel} RMSE"] = "-"
            rr = run[(run["encoder"] == enc) & (run["method"] == method)]
            r["seconds"] = f"{rr['seconds'].sum():.0f}"
            r["peak MiB"] = f"{rr['peak_mib'].max():.0f}"
            trows.append(r)
        folds = ", ".join(f.name for f in protocols[proto])
        lines += [f"## {proto} (folds: {folds})", "", table(trows), ""]
    if len(agreement_df):
        lines += ["## Image-derived proportions vs stereoscope (Pearson over held-out spots, mean over folds)", ""]
        types = [c for c in agreement_df.columns if c not in ("protocol", "fold", "panel", "encoder", "method")]
        arows = []
        for (proto, enc, method, panel), g in agreement_df.groupby(
            ["protocol", "encoder", "method", "panel"], sort=False
        ):
            if panel != next(iter(panel_sets)):
                continue
            arows.append(
                {
                    "protocol": proto,
                    "encoder": enc,
                    "method": method,
                    **{t: f"{g[t].mean():.2f}" for t in types},
                    "mean over types": f"{np.nanmean([g[t].mean() for t in types]):.2f}",
                }
            )
        lines += [table(arows), ""]
    lines += ["## Embedding cost (all 1,193 spots, once per encoder)", "", table(embed_cost), ""]
    text = "\n".join(lines)
    (out / "tables.md").write_text(text)
    (out / "settings.json").write_text(json.dumps(vars(args), indent=1))
    figure(sections, out / "summary.png", list(panel_sets))
    print(text)
    print(f"results in {out}")


def figure(sections: pd.DataFrame, path: Path, panel_names: list[str]) -> None:
    import matplotlib.pyplot as plt

    protos = list(dict.fromkeys(sections["protocol"]))
    fig, axes = plt.subplots(
        len(protos), len(panel_names), figsize=(6 * len(panel_names), 3.6 * len(protos)), squeeze=False
    )
    for i, proto in enumerate(protos):
        for j, panel in enumerate(panel_names):
            ax = axes[i, j]
            g = sections[(sections["protocol"] == proto) & (sections["panel"] == panel)]
            if g.empty:
                ax.set_axis_off()
                continue
            means = g.groupby(["method", "encoder"], sort=False)["spearman"].agg(["mean", "std"]).unstack("encoder")
            means["mean"].plot.barh(ax=ax, xerr=means["std"], width=0.8)
            ax.axvline(0, color="k", lw=0.5)
            ax.set_xlabel("mean per-gene Spearman per held-out section")
            ax.set_ylabel("")
            ax.set_title(f"{proto}, {panel}")
            ax.legend(fontsize=7, loc="best", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
