"""Reliability, round four (issue 41): keys that never clobber a user's result, targets keyed on their inputs,
deconvolution right at bulk depth, interrupted demos, half-written predictions, nuclei at coarse pixels,
and errors that say what is wrong. Each test failed on main f73d856."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import cpnn as cp

from ._synthetic import synthetic_sdata

KW = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0, "context_um": 0}


@pytest.fixture
def two():
    """SpatialData with sections S1, S2: raw counts, panel, prototypes (a fresh copy per test)."""
    sdata, profiles = synthetic_sdata(np.random.default_rng(7), n_side=8, sections=("S1", "S2"))
    cp.pp.select_genes(sdata, n_top_genes=40)
    cp.pp.build_prototypes(sdata, profiles)
    return sdata, profiles


def _deconvolutions(monkeypatch) -> list[int]:
    """Count the deconvolutions a fit runs (spots each)."""
    from cpnn.tl import _targets

    calls: list[int] = []
    real = _targets.deconvolve
    monkeypatch.setattr(_targets, "deconvolve", lambda *a, **k: calls.append(int(k["regions"].sum())) or real(*a, **k))
    return calls


def test_fit_never_replaces_the_users_deconvolution(two):
    """41.4: fit's own targets lived under cp.pp.deconvolve's default key and replaced the user's result."""
    sdata, _ = two
    table = sdata["table"]
    cp.pp.deconvolve(sdata)
    mine = table.obsm["cpnn_deconvolution"].copy()
    record = dict(table.uns["cpnn"]["deconvolution"]["cpnn_deconvolution"])
    model = cp.tl.fit(sdata, train=["S1"], validation=["S2"], epochs=2, **KW)
    pd.testing.assert_frame_equal(table.obsm["cpnn_deconvolution"], mine)  # S2's rows too
    assert table.uns["cpnn"]["deconvolution"]["cpnn_deconvolution"]["calls"] == record["calls"]
    assert model.config["composition_key"] == "cpnn_targets"
    targets = table.obsm["cpnn_targets"].to_numpy()
    s1 = table.obs["section"].to_numpy() == "S1"
    assert np.isfinite(targets[s1]).all() and np.isnan(targets[~s1]).all()
    assert table.uns["cpnn"]["deconvolution"]["cpnn_targets"]["made_by"] == "cp.tl.fit"


def test_a_failed_fit_writes_no_targets(two):
    """41.4: the targets were written before the inputs were checked, so a fit that then failed left them."""
    sdata, _ = two
    table = sdata["table"]
    with pytest.raises(cp.CpnnError, match="typo"):
        cp.tl.fit(sdata, train=["S1"], validation=["S2"], epochs=2, image_key="typo", **KW)
    assert "cpnn_targets" not in table.obsm
    assert "deconvolution" not in table.uns["cpnn"]


def test_targets_are_remade_when_what_they_came_from_changes(two, monkeypatch):
    """41.5: corrected counts, other prototypes with the same names or another layer reused the old targets."""
    sdata, profiles = two
    table = sdata["table"]
    calls = _deconvolutions(monkeypatch)
    cp.tl.fit(sdata, train=["S1"], epochs=1, **KW)
    first = table.obsm["cpnn_targets"].to_numpy().copy()
    cp.tl.fit(sdata, train=["S1"], epochs=1, **KW)
    assert len(calls) == 1  # same inputs: reused
    # corrected counts (the same spots and genes)
    rng = np.random.default_rng(0)
    X = table.X.toarray()
    table.X = sparse.csr_matrix(X[rng.permutation(len(X))])
    cp.tl.fit(sdata, train=["S1"], epochs=1, **KW)
    assert len(calls) == 2
    assert np.nanmax(np.abs(table.obsm["cpnn_targets"].to_numpy() - first)) > 0.05
    # prototypes from another reference with the same cell-type names
    other = profiles.copy()
    other.iloc[:, :] = np.random.default_rng(1).gamma(0.5, 1.0, size=other.shape) + 0.01
    cp.pp.build_prototypes(sdata, other)
    cp.tl.fit(sdata, train=["S1"], epochs=1, **KW)
    assert len(calls) == 3
    # another layer
    table.layers["raw"] = sparse.csr_matrix(X)
    cp.tl.fit(sdata, train=["S1"], epochs=1, layer="raw", **KW)
    assert len(calls) == 4
    assert table.uns["cpnn"]["deconvolution"]["cpnn_targets"]["layer"] == "raw"


def test_fit_does_not_train_on_a_result_it_did_not_make(two):
    """41.10: the paper preset trained on an NNLS result found under its targets key."""
    sdata, _ = two
    cp.pp.deconvolve(sdata, method="nnls", key_added="cpnn_targets")
    with pytest.raises(cp.CpnnError, match=r"obsm\['cpnn_targets'\] holds a composition that cp.tl.fit did not make"):
        cp.tl.fit(sdata, train=["S1"], preset="paper", epochs=1, **KW)
    model = cp.tl.fit(sdata, train=["S1"], preset="paper", epochs=1, composition_key="cpnn_targets", **KW)
    assert model.config["composition_key"] == "cpnn_targets"


def test_one_deconvolution_key_holds_one_set_of_settings(two):
    """41.10: scaling_prior mixed into a key holding another fit; ignored under nnls."""
    sdata, _ = two
    cp.pp.deconvolve(sdata, regions=["S1"], key_added="k")
    with pytest.raises(cp.CpnnError, match=r"scaling_prior=0.*scaling_prior=50"):
        cp.pp.deconvolve(sdata, regions=["S2"], key_added="k", scaling_prior=50)
    with pytest.raises(cp.CpnnError, match=r"scaling_prior=50 applies to method='nb' only"):
        cp.pp.deconvolve(sdata, method="nnls", key_added="n", scaling_prior=50)


def test_all_zero_counts_are_named_as_such(two):
    """41.11: all-zero counts were reported as zero prototypes."""
    sdata, _ = two
    table = sdata["table"]
    table.layers["zero"] = sparse.csr_matrix(table.shape, dtype=np.float32)
    with pytest.raises(cp.CpnnError, match=r"layer 'zero'.*are zero in every gene with a prototype"):
        cp.pp.deconvolve(sdata, layer="zero")


def test_deconvolution_is_right_at_bulk_depth_and_free_of_the_counts_unit():
    """41.6: correlation with planted truth fell to 0.53 at 2e7 counts; counts x1e5 moved proportions by 0.65."""
    import anndata as ad

    rng = np.random.default_rng(0)
    G, K, N = 300, 6, 60
    protos = rng.gamma(0.5, 1.0, size=(K, G)) + 0.01
    protos /= protos.sum(1, keepdims=True)
    truth = rng.dirichlet(np.full(K, 0.7), size=N)
    profiles = pd.DataFrame(protos.T, index=[f"g{i}" for i in range(G)], columns=[f"t{k}" for k in range(K)])
    found = {}
    for depth, scale in ((2e3, 1), (2e3, 100_000), (2e6, 1), (2e7, 1), (2e8, 1)):
        mu = depth * truth @ protos
        counts = np.random.default_rng(int(depth)).negative_binomial(20, 20 / (20 + mu)).astype(np.float64)
        bulk = ad.AnnData(counts * scale, var=pd.DataFrame(index=profiles.index))
        cp.pp.build_prototypes(bulk, profiles)
        cp.pp.deconvolve(bulk)
        found[depth, scale] = est = bulk.obsm["cpnn_deconvolution"].to_numpy()
        r = np.corrcoef(est.ravel(), truth.ravel())[0, 1]
        assert r > (0.97 if depth < 1e6 else 0.99), (depth, scale, r)
        assert bulk.uns["cpnn"]["deconvolution"]["cpnn_deconvolution"]["converged"]
    np.testing.assert_allclose(found[2e3, 100_000], found[2e3, 1], atol=1e-6)


def test_an_interrupted_demo_says_so_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """41.7: Ctrl-C during a demo seed reported it "converged", trained the next seed, wrote outputs, exit 0."""
    from cpnn._cli import main
    from cpnn.models import CPNNHead

    real = CPNNHead.loss_terms
    calls = {"n": 0}

    def loss_terms(self, *args):
        calls["n"] += 1
        if calls["n"] == 40:  # Ctrl-C in the second epoch
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(CPNNHead, "loss_terms", loss_terms)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seeds", "2", "--epochs", "20", "--n-genes", "50"]) == 130
    printed = capsys.readouterr().out
    assert "seed 0: training interrupted" in printed and "seed 1" not in printed and "converged" not in printed
    assert not list(out.glob("*")) if out.exists() else True


def test_the_demo_refuses_a_misspelt_encoder_and_zero_epochs_before_loading(tmp_path, capsys):
    """41.11: `cpnn demo --encoder nucleii` / `--epochs 0` were refused only after 51-199 s of loading."""
    import time

    from cpnn._cli import main

    for argv, message in (
        (["--encoder", "nucleii"], "did you mean 'nuclei'"),
        (["--epochs", "0"], "--epochs 0: train at least one epoch"),
    ):
        start = time.perf_counter()
        with pytest.raises(SystemExit) as exit_:
            main(["demo", "--out", str(tmp_path / "d"), *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
        assert time.perf_counter() - start < 10


def _table(sdata):
    return sdata["table"]


def test_a_prediction_that_fails_writes_nothing_and_stale_depth_layers_are_cleared(two, cpnn_log):
    """41.8: a bad layer= failed after layers['cpnn'] held the new model's values; an old measured-depth layer
    stayed beside a new prediction, unmarked."""
    sdata, _ = two
    table = _table(sdata)
    m1 = cp.tl.fit(sdata, train=["S1"], epochs=1, targets="given", **KW)
    m2 = cp.tl.fit(sdata, train=["S1"], epochs=3, targets="given", **{**KW, "seed": 1})
    cp.tl.predict(sdata, m1, regions=["S2"], measured_depth=True)
    before = table.layers["cpnn"].toarray().copy()
    models = table.obs["cpnn_model"].copy()
    with pytest.raises(cp.CpnnError, match=r"layer='typo' is not a layer"):
        cp.tl.predict(sdata, m2, regions=["S2"], measured_depth=True, layer="typo")
    np.testing.assert_array_equal(table.layers["cpnn"].toarray(), before)
    pd.testing.assert_series_equal(table.obs["cpnn_model"], models)
    cp.tl.predict(sdata, m2, regions=["S2"])
    s2 = table.obs["section"].to_numpy() == "S2"
    genes = table.var_names.get_indexer(m2.genes)
    assert np.isnan(table.layers["cpnn_measured_depth"].toarray()[np.ix_(s2, genes)]).all()
    assert "layers['cpnn_measured_depth'] held an earlier prediction" in cpnn_log()


def test_nuclei_columns_follow_their_embedding_and_coarse_images_are_named(two, cpnn_log):
    """41.9: two embeddings shared obs['cpnn_n_nuclei']; a user's column was overwritten; a 4 um/px image was
    upsampled 8x in silence."""
    sdata, _ = two
    table = _table(sdata)
    table.obs["cpnn_n_nuclei"] = 7.0  # the user's own column
    cp.pp.embed(sdata, encoder="nuclei", patch_size_um=32, image_key="S1_full", spots=["S1"])
    assert (table.obs["cpnn_n_nuclei"] == 7.0).all() and "is not a column cpnn wrote" in cpnn_log()
    del table.obs["cpnn_n_nuclei"]
    cp.pp.embed(sdata, encoder="nuclei", patch_size_um=32, image_key="S1_full", spots=["S1"])
    assert "S1_hires" not in cpnn_log()
    cp.pp.embed(sdata, encoder="nuclei", patch_size_um=32, image_key="S1_hires", spots=["S1"], key_added="coarse")
    assert "image 'S1_hires' of region 'S1_spots' has 2 um per pixel" in cpnn_log()
    assert "upsampled 4.0x" in cpnn_log()
    assert {"cpnn_n_nuclei", "coarse_n_nuclei"} <= set(table.obs.columns)
    s1 = table.obs["section"].to_numpy() == "S1"
    assert not np.allclose(table.obs["cpnn_n_nuclei"][s1], table.obs["coarse_n_nuclei"][s1])


def test_obs_columns_of_one_composition_are_not_replaced_by_another(two):
    """41.10: proportions_to_obs from a second key replaced the first key's columns silently."""
    sdata, _ = two
    cp.pp.deconvolve(sdata, key_added="a")
    cp.pp.deconvolve(sdata, method="nnls", key_added="b")
    cp.pp.proportions_to_obs(sdata, key="a")
    with pytest.raises(cp.CpnnError, match=r"hold the composition of obsm\['a'\].*prefix="):
        cp.pp.proportions_to_obs(sdata, key="b")
    cp.pp.proportions_to_obs(sdata, key="b", prefix="b_")
    cp.pp.proportions_to_obs(sdata, key="a")  # the same key again: updated in place


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"seed": -1}, r"seed=-1 must be at least 0"),
        ({"max_patches": 2.5}, r"max_patches=2.5 must be positive and a whole number"),
        ({"max_patches": "8"}, r"max_patches='8' must be positive and a whole number"),
    ],
)
def test_options_that_were_accepted_or_failed_bare_are_named(two, option, message):
    """41.10-11: seed=-1 gave numpy's bare ValueError, max_patches=2.5 was taken as 2, '8' a bare TypeError."""
    sdata, _ = two
    with pytest.raises(cp.CpnnError, match=message):
        cp.tl.fit(sdata, train=["S1"], epochs=1, **{**KW, **option})


def test_counts_beyond_float32s_whole_numbers_are_kept_exact():
    """41.10: counts above 2**24 were stored as float32 (16777217 became 16777216)."""
    import anndata as ad

    big = 2**24 + 1
    counts = ad.AnnData(np.array([[big, 3.0], [5.0, big + 2]]), var=pd.DataFrame(index=["a", "b"]))
    image = np.full((64, 64, 3), 200, np.uint8)
    sdata = cp.io.from_arrays(image, np.array([[16.0, 16.0], [48.0, 48.0]]), counts, spot_diameter_um=10, mpp=1.0)
    X = sdata["table"].X
    assert X.dtype == np.float64 and X.toarray()[0, 0] == big and X.toarray()[1, 1] == big + 2
    from cpnn._core import panel_counts

    block = panel_counts(sdata["table"], ["a", "b"], np.ones(2, bool), None, argument="training")
    assert block[0, 0] == big


def test_a_bins_table_mixing_bin_sizes_is_refused_when_embedded():
    """41.10: a bins table mixing 2 and 4 um squares was embedded at one scale."""
    import shapely
    from geopandas import GeoDataFrame
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    from .test_your_data import _visium_hd

    sdata, _ = _visium_hd(np.random.default_rng(8))
    shapes = sdata.shapes["hd_square_002um"]
    b = shapes.geometry.bounds.to_numpy()
    half = np.arange(len(b)) < len(b) // 2
    side = np.where(half, 2 * (b[:, 2] - b[:, 0]), b[:, 2] - b[:, 0])
    geo = GeoDataFrame(geometry=shapely.box(b[:, 0], b[:, 1], b[:, 0] + side, b[:, 1] + side), index=shapes.index)
    sdata.shapes["hd_square_002um"] = ShapesModel.parse(geo, transformations=get_transformation(shapes, get_all=True))
    with pytest.raises(cp.CpnnError, match=r"mixes square bins of 2 sizes .*patches are read at one bin size"):
        cp.pp.embed(sdata, encoder="handcrafted", table_key="square_002um")
    assert "cpnn_embedding" not in sdata["square_002um"].obsm
