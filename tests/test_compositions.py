"""Compositions you can trust: deconvolution targets, supervision on training spots only, markers, maps."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import cpnn as cp

from ._synthetic import synthetic_sdata


def _planted(rng, *, n=400, genes=300, types=5, scaling_sd=0.3, theta=10.0):
    protos = rng.gamma(0.4, 1.0, size=(types, genes)) + 0.005
    protos /= protos.sum(1, keepdims=True)
    comps = rng.dirichlet(np.full(types, 0.6), size=n)
    scaling = np.exp(rng.normal(0, scaling_sd, size=genes))  # technical, per gene, shared by all spots
    rate = comps @ protos * scaling
    rate /= rate.sum(1, keepdims=True)
    library = rng.uniform(2000, 6000, size=(n, 1))
    mu = rate * library
    counts = rng.negative_binomial(theta, theta / (theta + mu))
    names = [f"g{i}" for i in range(genes)]
    adata = ad.AnnData(
        sparse.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame({"section": np.repeat(["a", "b"], n // 2)}, index=[f"s{i}" for i in range(n)]),
        var=pd.DataFrame(index=names),
    )
    profiles = pd.DataFrame(protos.T * 1e4, index=names, columns=[f"t{k}" for k in range(types)])
    return adata, profiles, comps


@pytest.mark.parametrize("method", ["nb", "nnls"])
def test_deconvolve_recovers_planted_proportions(method):
    adata, profiles, comps = _planted(np.random.default_rng(0), scaling_sd=0.3 if method == "nb" else 0.1)
    cp.pp.build_prototypes(adata, profiles)
    cp.pp.deconvolve(adata, method=method, n_genes=300)
    est = adata.obsm["cpnn_deconvolution"]
    assert list(est.columns) == list(profiles.columns)
    np.testing.assert_allclose(est.sum(1), 1.0, atol=1e-5)
    r = [np.corrcoef(est.iloc[:, k], comps[:, k])[0, 1] for k in range(comps.shape[1])]
    assert min(r) > 0.95, r
    info = adata.uns["cpnn"]["deconvolution"]["cpnn_deconvolution"]
    assert info["method"] == method and info["n_spots"] == adata.n_obs


def test_nb_deconvolution_absorbs_technical_gene_scaling():
    """With strong per-gene scaling the NB model (which estimates it) beats plain NNLS."""
    adata, profiles, comps = _planted(np.random.default_rng(1), scaling_sd=0.8)
    cp.pp.build_prototypes(adata, profiles)
    score = {}
    for method in ("nb", "nnls"):
        cp.pp.deconvolve(adata, method=method, key_added=method, n_genes=300)
        est = adata.obsm[method].to_numpy()
        score[method] = np.mean([np.corrcoef(est[:, k], comps[:, k])[0, 1] for k in range(comps.shape[1])])
    assert score["nb"] > 0.95 and score["nb"] > score["nnls"] + 0.02, score


def test_a_scaling_prior_holds_the_gene_scaling_near_one():
    """``scaling_prior`` shrinks the fitted per-gene scaling towards 1; without it the planted scaling is found."""
    adata, profiles, _ = _planted(np.random.default_rng(1), scaling_sd=0.8)
    cp.pp.build_prototypes(adata, profiles)
    sd = {}
    for prior in (0.0, 1e2, 1e6):  # converged fits (the default tol stops while the scaling still moves)
        cp.pp.deconvolve(adata, key_added=f"p{prior:g}", n_genes=300, scaling_prior=prior, tol=1e-7, n_iter=500)
        info = adata.uns["cpnn"]["deconvolution"][f"p{prior:g}"]
        assert info["scaling_prior"] == prior and info["converged"]
        assert np.isclose(np.exp(np.mean(np.log(info["gene_scaling"]))), 1.0, atol=1e-4)  # re-centred either way
        sd[prior] = info["gene_scaling_sd"]
    assert 0.6 < sd[0.0] < 1.0 and sd[1e6] < 0.02 and sd[1e6] < sd[1e2] < sd[0.0], sd
    with pytest.raises(cp.CpnnError, match="scaling_prior"):
        cp.pp.deconvolve(adata, scaling_prior=-1.0)


def test_deconvolve_regions_zero_counts_and_errors(cpnn_log):
    adata, profiles, _ = _planted(np.random.default_rng(2), n=60)
    X = adata.X.toarray()
    X[0] = 0
    adata.X = sparse.csr_matrix(X)
    cp.pp.build_prototypes(adata, profiles)
    cp.pp.deconvolve(adata, method="nnls", regions=("section", "a"))
    est = adata.obsm["cpnn_deconvolution"]
    a = (adata.obs["section"] == "a").to_numpy()
    assert est.loc[~a].isna().all().all() and est.iloc[0].isna().all() and est.iloc[1:30].notna().all().all()
    assert "1 spots have no counts" in cpnn_log()
    with pytest.raises(cp.CpnnError, match="method='em'"):
        cp.pp.deconvolve(adata, method="em")
    with pytest.raises(cp.CpnnError, match="No prototypes"):
        cp.pp.deconvolve(adata, prototypes_key="other")
    lognormed = adata.copy()
    lognormed.X = sparse.csr_matrix(np.log1p(X) + 0.5)
    with pytest.raises(cp.CpnnError, match="non-integer"):
        cp.pp.deconvolve(lognormed, method="nb")


@pytest.fixture(scope="module")
def world():
    s, profiles = synthetic_sdata(np.random.default_rng(21), sections=("S1", "S2", "S3"))
    cp.pp.select_genes(s, n_top_genes=60)
    cp.pp.build_prototypes(s, profiles)
    return s


KW = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0, "epochs": 30, "context_um": 0}


def test_supervision_uses_training_targets_only(world):
    """Poisoning the targets of the validation and test spots changes nothing."""
    t = world["table"]
    cp.pp.deconvolve(world, regions=["S1"])  # targets of the training section
    clean = cp.tl.fit(world, train=["S1"], validation=["S2"], composition_key="cpnn_deconvolution", **KW)
    held = (t.obs["section"] != "S1").to_numpy()
    frame = t.obsm["cpnn_deconvolution"].copy()
    frame.loc[held] = np.random.default_rng(0).dirichlet(np.ones(frame.shape[1]), size=int(held.sum()))
    t.obsm["cpnn_deconvolution"] = frame
    poisoned = cp.tl.fit(world, train=["S1"], validation=["S2"], composition_key="cpnn_deconvolution", **KW)
    assert clean.history == poisoned.history
    for (k, v), (_, w) in zip(clean.head.state_dict().items(), poisoned.head.state_dict().items(), strict=True):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)
    # a training spot without a target is refused with the fix
    frame.iloc[0] = np.nan
    t.obsm["cpnn_deconvolution"] = frame
    with pytest.raises(cp.CpnnError, match="deconvolve every training spot"):
        cp.tl.fit(world, train=["S1"], composition_key="cpnn_deconvolution", **KW)


def test_supervision_pulls_compositions_to_the_targets(world):
    """With planted tissue, supervised weights agree with the planted composition on held-out spots."""
    t = world["table"]
    cp.pp.deconvolve(world, regions=["S1", "S2"])
    model = cp.tl.fit(world, train=["S1"], validation=["S2"], composition_key="cpnn_deconvolution", **KW)
    cp.tl.predict(world, model, regions=["S3"], key_added="sup")
    s3 = (t.obs["section"] == "S3").to_numpy()
    truth, props = t.obsm["truth"].loc[s3], t.obsm["sup_proportions"].loc[s3]
    r = [np.corrcoef(props[c], truth[c])[0, 1] for c in truth.columns]
    assert np.mean(r) > 0.85, r


def test_switched_off_types_are_reported(world, cpnn_log):
    t = world["table"]
    model = cp.tl.fit(world, train=["S1"], **KW)
    # silence one cell type: a model whose composition never uses it
    head = model.tile_head
    with torch.no_grad():
        head.mlp[-1].bias[0] = -50.0
    cp.tl.predict(world, model, regions=["S3"], key_added="off")
    assert t.uns["cpnn"]["predict"]["types_never_above"] == ["t0"]
    assert "never exceed 1%" in cpnn_log()


def test_markers_join_the_panel_and_types_without_markers_are_named(cid4465, her2st_all, cpnn_log):
    table = her2st_all["table"]
    cp.pp.select_genes(table, n_top_genes=100)
    cp.pp.build_prototypes(table, cid4465, cell_type_key="celltype_major", method="mean")
    from cpnn._core import panel_genes, panel_prototypes, unmarked_types

    before = unmarked_types(*panel_prototypes(table, panel_genes(table), "cpnn_prototypes"))
    assert before, "the top-100 panel should leave some cell types without a marker"
    cp.pp.select_genes(table, n_top_genes=100, markers=5, reference=cid4465, cell_type_key="celltype_major")
    markers = table.uns["cpnn"]["panel"]["markers"]
    assert {"T-cells", "B-cells", "Endothelial"} <= set(markers)
    assert "CD3E" in markers["T-cells"] or "CD3D" in markers["T-cells"] or "CD2" in markers["T-cells"]
    assert table.var["cpnn_marker"].sum() > 10
    assert (table.var["cpnn_selected"] & ~table.var["cpnn_marker"]).sum() == 100
    cp.pp.build_prototypes(table, cid4465, cell_type_key="celltype_major", method="mean")
    after = unmarked_types(*panel_prototypes(table, panel_genes(table), "cpnn_prototypes"))
    assert len(after) < len(before), (before, after)
    with pytest.raises(cp.CpnnError, match="reference="):
        cp.pp.select_genes(table, n_top_genes=100, markers=5)


def test_composition_maps(world, tmp_path):
    import matplotlib.pyplot as plt

    t = world["table"]
    cp.pp.deconvolve(world)
    t.obsm["cpnn_proportions"] = t.obsm["truth"].copy()  # a composition to compare with
    t.obsm["cpnn_proportions"]["t2"] = 0.001
    fig = cp.pl.proportions(world, region="S2", scale="shared", return_fig=True)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles == ["t0", "t1"] and "t2 (max 0.001)" in fig.texts[-1].get_text()
    bars = [a for a in fig.axes if getattr(a, "_colorbar", None)]
    assert len(bars) == 1 and bars[0].get_xlabel() == "proportion (shared 0-1 scale)"  # one bar for the shared scale
    plt.close(fig)
    fig = cp.pl.dominant(world, region="S2", key="cpnn_deconvolution", min_dominance=0.5, return_fig=True)
    legend = [x.get_text() for x in fig.axes[0].get_legend().get_texts()]
    assert all(name.startswith(("t", "mixed")) for name in legend)
    props = t.obsm["cpnn_deconvolution"].loc[t.obs["section"].to_numpy() == "S2"].to_numpy()
    share_mixed = float(np.mean(props.max(1) < 0.5))
    assert (share_mixed > 0) == any(name.startswith("mixed") for name in legend)
    assert "Reference cell types: t0, t1, t2" in fig.texts[-1].get_text()
    assert "deconvolved from the counts" in fig.axes[0].get_title()
    plt.close(fig)
    fig = cp.pl.compare_proportions(world, region="S2", return_fig=True, save=tmp_path / "cmp.png")
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles[1].startswith("t0\ndeconvolved from the counts, r = ")
    assert (tmp_path / "cmp.png").stat().st_size > 5000
    plt.close(fig)
    assert cp.pl.dominant(world, region="S2", show=False) is not None
    plt.close("all")
    # compartments (#38): merged before the largest share is taken; every spot coloured, none "mixed"
    fig = cp.pl.dominant(world, region="S2", key="cpnn_deconvolution", groups={"g": ["t1", "t2"]}, return_fig=True)
    legend = [x.get_text() for x in fig.axes[0].get_legend().get_texts()]
    assert any(name.startswith("g (") for name in legend) and not any(name.startswith("mixed") for name in legend)
    assert set(legend) <= {x for x in legend if x.startswith(("g (", "t0 ("))}
    assert "Dominant compartment" in fig.axes[0].get_title() and "g = t1 + t2" in fig.texts[-1].get_text()
    plt.close(fig)
    with pytest.raises(cp.CpnnError, match=r"groups\['g'\] names \['t9'\]"):
        cp.pl.dominant(world, region="S2", key="cpnn_deconvolution", groups={"g": ["t9"]})
    with pytest.raises(cp.CpnnError, match=r"in groups 'a' and 'b'"):
        cp.pl.dominant(world, region="S2", key="cpnn_deconvolution", groups={"a": ["t1"], "b": ["t1", "t2"]})
    plt.close("all")


# --- Deconvolution at scale (chunks, bounded memory, h5ad) -----------------------------------------


def test_chunked_deconvolution_equals_one_chunk_and_holds_one_chunk_dense(monkeypatch):
    """Spots are solved independently: any chunking gives the same compositions; no dense block exceeds a chunk."""
    import cpnn.pp._deconvolve as dec

    adata, profiles, comps = _planted(np.random.default_rng(3), n=600, scaling_sd=0.5)
    cp.pp.build_prototypes(adata, profiles)
    cp.pp.deconvolve(adata, chunk_size=adata.n_obs, key_added="one", shared_spots=300)
    seen = []
    original = dec.dense_rows

    def spy(X, rows, cols=None):
        seen.append((len(rows), X.shape[1] if cols is None else len(cols)))
        return original(X, rows, cols)

    monkeypatch.setattr(dec, "dense_rows", spy)
    cp.pp.deconvolve(adata, chunk_size=64, key_added="chunked", shared_spots=300)
    one, chunked = adata.obsm["one"].to_numpy(), adata.obsm["chunked"].to_numpy()
    np.testing.assert_allclose(chunked, one, atol=5e-3)  # both stop once no spot moves by 1e-4 per cycle
    assert min(np.corrcoef(chunked[:, k], one[:, k])[0, 1] for k in range(one.shape[1])) > 0.999
    r = [np.corrcoef(chunked[:, k], comps[:, k])[0, 1] for k in range(comps.shape[1])]
    assert min(r) > 0.95, r
    assert max(n for n, _ in seen) <= 300  # the shared fit's subsample, then chunks of 64
    assert sum(n == 64 for n, _ in seen) >= 9
    info = adata.uns["cpnn"]["deconvolution"]["chunked"]
    assert info["chunk_size"] == 64 and info["shared_spots"] == 300 and info["converged"]
    assert all(g == info["n_genes"] for _, g in seen)  # the chosen genes only, never all of them


def test_deconvolve_after_an_h5ad_round_trip(tmp_path):
    """h5ad gives uns lists back as arrays; deconvolve and the predicted-panel reader take both."""
    adata, profiles, comps = _planted(np.random.default_rng(4), n=200)
    cp.pp.build_prototypes(adata, profiles)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert not isinstance(back.uns["cpnn"]["prototype_sets"]["cpnn_prototypes"]["cell_types"], list)
    cp.pp.deconvolve(back, n_genes=300)
    est = back.obsm["cpnn_deconvolution"].to_numpy()
    assert np.mean([np.corrcoef(est[:, k], comps[:, k])[0, 1] for k in range(comps.shape[1])]) > 0.9


def test_deconvolve_refuses_a_cell_type_without_expression_and_deprecates_lr():
    adata, profiles, _ = _planted(np.random.default_rng(5), n=100)
    profiles["t2"] = 0.0
    cp.pp.build_prototypes(adata, profiles)
    with pytest.raises(cp.CpnnError, match=r"\['t2'\] are zero on every deconvolution gene"):
        cp.pp.deconvolve(adata, method="nnls")
    adata, profiles, _ = _planted(np.random.default_rng(5), n=100)
    cp.pp.build_prototypes(adata, profiles)
    with pytest.warns(FutureWarning, match="lr"):
        cp.pp.deconvolve(adata, lr=0.1, n_genes=300)


def test_one_deconvolution_key_holds_one_method_and_one_prototype_set():
    """29.5/29.6: adding spots to a key made with other cell types or another method is refused, not NaN-ed."""
    adata, profiles, _ = _planted(np.random.default_rng(6), n=200)
    cp.pp.build_prototypes(adata, profiles)
    cp.pp.deconvolve(adata, regions=("section", "a"), n_genes=300)
    cp.pp.deconvolve(adata, regions=("section", "b"), n_genes=300)  # same settings: the key grows
    info = adata.uns["cpnn"]["deconvolution"]["cpnn_deconvolution"]
    assert info["n_spots"] == 200 and info["n_spots_this_call"] == 100 and info["calls"] == 2
    before = adata.obsm["cpnn_deconvolution"].copy()
    with pytest.raises(cp.CpnnError, match=r"holds 100 spots deconvolved earlier \(method='nb'.*method='nnls'"):
        cp.pp.deconvolve(adata, regions=("section", "b"), method="nnls")
    renamed = profiles.rename(columns=lambda c: c.upper())
    cp.pp.build_prototypes(adata, renamed)
    with pytest.raises(cp.CpnnError, match="another key_added="):
        cp.pp.deconvolve(adata, regions=("section", "b"), n_genes=300)
    pd.testing.assert_frame_equal(adata.obsm["cpnn_deconvolution"], before)  # nothing lost
    cp.pp.deconvolve(adata, n_genes=300)  # every spot again: a fresh key
    assert list(adata.obsm["cpnn_deconvolution"].columns) == list(renamed.columns)


def test_an_unexplained_component_takes_expression_no_type_explains():
    """Planted spots with an extra profile (tissue the reference lacks): a learned profile finds it, a flat one
    takes a share only where the extra profile is."""
    rng = np.random.default_rng(5)
    n, genes, types = 400, 300, 4
    protos = rng.gamma(0.4, 1.0, size=(types + 1, genes)) + 0.005
    protos /= protos.sum(1, keepdims=True)
    comps = rng.dirichlet(np.full(types + 1, 0.6), size=n)
    comps[: n // 2, -1] = 0.0  # half the spots hold none of the missing type
    comps /= comps.sum(1, keepdims=True)
    mu = comps @ protos * rng.uniform(2000, 6000, size=(n, 1))
    counts = rng.negative_binomial(10.0, 10.0 / (10.0 + mu))
    names = [f"g{i}" for i in range(genes)]
    adata = ad.AnnData(sparse.csr_matrix(counts.astype(np.float32)), var=pd.DataFrame(index=names))
    adata.obs_names = [f"s{i}" for i in range(n)]
    # the reference lacks the last profile
    profiles = pd.DataFrame(protos[:types].T * 1e4, index=names, columns=[f"t{k}" for k in range(types)])
    cp.pp.build_prototypes(adata, profiles, rna_content=dict.fromkeys(profiles.columns, 1e4))
    cp.pp.deconvolve(adata, n_genes=300, key_added="plain")
    cp.pp.deconvolve(adata, n_genes=300, key_added="with", unexplained="learned")
    cp.pp.deconvolve(adata, n_genes=300, key_added="flat", unexplained="flat")
    plain, extra = adata.obsm["plain"].to_numpy(), adata.obsm["with"]
    assert list(extra.columns) == [*profiles.columns, "unexplained"]
    np.testing.assert_allclose(extra.sum(1), 1.0, atol=1e-5)
    assert np.corrcoef(extra["unexplained"], comps[:, -1])[0, 1] > 0.9
    assert np.abs(extra["unexplained"].to_numpy() - comps[:, -1]).mean() < 0.05
    # the reference types are read closer to their planted shares than when the missing type is spread over them
    err_with = np.abs(extra.to_numpy()[:, :types] - comps[:, :types]).mean()
    err_plain = np.abs(plain - comps[:, :types] / comps[:, :types].sum(1, keepdims=True)).mean()
    assert err_with < 0.05 and err_with < err_plain, (err_with, err_plain)
    info = adata.uns["cpnn"]["deconvolution"]["with"]
    assert np.isclose(np.sum(info["unexplained_profile"]), 1.0, atol=1e-4)
    assert np.corrcoef(info["unexplained_profile"], protos[-1][adata.var_names.get_indexer(info["genes"])])[0, 1] > 0.9
    flat = adata.obsm["flat"]["unexplained"].to_numpy()
    assert flat[comps[:, -1] > 0.3].mean() > 2 * flat[comps[:, -1] == 0].mean()
    assert np.allclose(adata.uns["cpnn"]["deconvolution"]["flat"]["unexplained_profile"], 1 / len(info["genes"]))
    with pytest.raises(cp.CpnnError, match="unexplained='flat' needs method='nb'"):
        cp.pp.deconvolve(adata, method="nnls", unexplained="flat")
    with pytest.raises(cp.CpnnError, match=r"use one of \[None, 'flat', 'learned'\]"):
        cp.pp.deconvolve(adata, unexplained=True)
    for other in (None, "flat"):  # one key, one setting
        with pytest.raises(cp.CpnnError, match="One key"):
            cp.pp.deconvolve(adata, n_genes=300, key_added="with", regions=np.arange(n) < 5, unexplained=other)
    # a reference type named like the component is refused (composition_columns, shared with fit)
    clash = profiles.rename(columns={"t0": "unexplained"})
    cp.pp.build_prototypes(adata, clash, rna_content=dict.fromkeys(clash.columns, 1e4), key_added="clash")
    with pytest.raises(cp.CpnnError, match="varm\\['clash'\\] has a cell type named 'unexplained'"):
        cp.pp.deconvolve(adata, prototypes_key="clash", key_added="c", unexplained="flat")


def test_maps_print_no_third_party_warning_and_draw_unexplained_in_grey(world, capsys):
    """cp.pl on a SpatialData and on a plain AnnData: no warning from squidpy & co, nothing printed (#38)."""
    import warnings

    import matplotlib.pyplot as plt

    t = world["table"]
    cp.pp.deconvolve(world, key_added="with_unexplained", unexplained="flat")
    plain = t[(t.obs["section"] == "S2").to_numpy()].copy()
    ids = plain.obs["spot_id"].to_numpy()
    plain.obsm["spatial"] = np.c_[ids % 12, ids // 12] * 40.0 + 40.0  # the synthetic grid, no image
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for data in (world, plain):
            plt.close(cp.pl.proportions(data, key="with_unexplained", return_fig=True))
            fig = cp.pl.dominant(data, key="with_unexplained", return_fig=True)
            colours = {h.get_label().split(" (")[0]: h.get_color() for h in fig.axes[0].get_legend().legend_handles}
            if "unexplained" in colours:  # grey, never a palette colour
                assert np.allclose(plt.matplotlib.colors.to_rgb(colours["unexplained"]), (0.45, 0.45, 0.45))
            plt.close(fig)
    assert not [str(w.message) for w in caught], [f"{w.category.__name__}: {w.message} ({w.filename})" for w in caught]
    assert "library_id" not in capsys.readouterr().out


def test_the_head_learns_an_unexplained_component_for_tissue_the_reference_lacks(tmp_path):
    """fit(unexplained="flat"): the reference lacks one planted type (its own colour in the image); the head's
    extra weight follows that type's planted share on held-out spots, survives save/load, and is refused where
    it means nothing (#42)."""
    sdata, profiles = synthetic_sdata(np.random.default_rng(23), n_side=10, sections=("S1", "S2", "S3"))
    table = sdata["table"]
    reference = profiles[["t0", "t1"]] * 1e4  # the reference has no t2
    cp.pp.select_genes(table, genes=list(table.var_names))
    cp.pp.build_prototypes(table, reference, rna_content=dict.fromkeys(reference.columns, 1e4))
    kw = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0, "epochs": 150}
    model = cp.tl.fit(sdata, train=["S1"], validation=["S2"], unexplained="flat", **kw)
    assert model.cell_types == ["t0", "t1", "unexplained"] and "+ unexplained" in repr(model)
    targets = table.obsm["cpnn_targets"]  # fit's own targets carry the component too
    assert list(targets.columns) == ["t0", "t1", "unexplained"]
    assert table.uns["cpnn"]["deconvolution"]["cpnn_targets"]["unexplained"] == "flat"
    cp.tl.predict(sdata, model, regions=["S3"])
    test = (table.obs["section"] == "S3").to_numpy()
    pred = table.obsm["cpnn_proportions"].loc[test]
    assert list(pred.columns) == ["t0", "t1", "unexplained"]
    np.testing.assert_allclose(pred.sum(1), 1.0, atol=1e-5)
    truth = table.obsm["truth"].loc[test, "t2"].to_numpy()
    r = np.corrcoef(pred["unexplained"], truth)[0, 1]
    assert r > 0.9, r  # 0.99 measured; without the component t2's share is spread over t0 and t1
    assert (
        np.abs(pred["t0"].to_numpy() - table.obsm["truth"].loc[test, "t0"].to_numpy()).mean() < 0.1
    )  # 0.03; none: 0.32
    # the flat profile stays flat while the reference's prototypes are learned
    protos = model.prototypes
    assert np.allclose(protos[:, -1], protos[0, -1])
    model.save(tmp_path / "m.pt")
    again = cp.CPNN.load(tmp_path / "m.pt")
    cp.tl.predict(sdata, again, regions=["S3"], key_added="again")
    np.testing.assert_allclose(table.obsm["again_proportions"].loc[test], pred, atol=1e-5)
    # off by default, in both presets; refused where there is no composition; targets must carry the column
    assert cp.tl.fit(sdata, train=["S1"], **{**kw, "epochs": 2}).cell_types == ["t0", "t1"]
    with pytest.raises(cp.CpnnError, match="head='direct' has none"):
        cp.tl.fit(sdata, train=["S1"], head="direct", unexplained="flat", **kw)
    with pytest.raises(cp.CpnnError, match=r"use one of \[None, 'flat', 'learned'\]"):
        cp.tl.fit(sdata, train=["S1"], unexplained=True, **kw)
    cp.pp.deconvolve(sdata, regions=["S1"], key_added="plain_targets")
    with pytest.raises(cp.CpnnError, match="no 'unexplained' column"):
        cp.tl.fit(sdata, train=["S1"], composition_key="plain_targets", unexplained="flat", **kw)
