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
