from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import sparse, stats

import cpnn as cp
from cpnn._core import columnwise_pearson, columnwise_spearman


def _adata(rng, n=60, g=40):
    X = rng.poisson(rng.gamma(1.0, 3.0, size=g), size=(n, g)).astype(np.float32)
    a = ad.AnnData(sparse.csr_matrix(X), var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
    a.obs["section"] = pd.Categorical(np.repeat(["A", "B"], n // 2))
    a.obs_names = [f"s{i}" for i in range(n)]
    return a


def test_select_genes_flavors(rng):
    a = _adata(rng)
    cp.pp.select_genes(a, n_top_genes=10)
    assert a.var["cpnn_selected"].sum() == 10
    norm = a.X.toarray() / a.X.toarray().sum(1, keepdims=True)
    top = set(a.var_names[np.argsort(-norm.mean(0))[:10]])
    assert set(a.var_names[a.var["cpnn_selected"]]) == top
    assert a.uns["cpnn"]["panel"]["flavor"] == "mean"
    cp.pp.select_genes(a, n_top_genes=8, flavor="hvg")
    assert a.var["cpnn_selected"].sum() == 8
    cp.pp.select_genes(a, genes=["g1", "g2", "zzz"])
    assert list(a.var_names[a.var["cpnn_selected"]]) == ["g1", "g2"]
    assert a.uns["cpnn"]["panel"]["n_skipped"] == 1
    copy = cp.pp.select_genes(a, n_top_genes=3, copy=True)
    assert copy.var["cpnn_selected"].sum() == 3 and a.var["cpnn_selected"].sum() == 2


def test_select_genes_errors(rng):
    a = _adata(rng)
    with pytest.raises(cp.CpnnError, match="flavor"):
        cp.pp.select_genes(a, flavor="best")
    with pytest.raises(cp.CpnnError, match="None of the"):
        cp.pp.select_genes(a, genes=["x", "y"])
    with pytest.raises(cp.CpnnError, match="table_key"):
        cp.pp.select_genes(cp.datasets.her2st(sections=["B4"], images=False), table_key="nope")
    with pytest.raises(cp.CpnnError, match="empty"):
        cp.pp.select_genes(a[:0])
    bad = a.copy()
    bad.X = bad.X.toarray()
    bad.X[0, 0] = -1
    with pytest.raises(cp.CpnnError, match="negative"):
        cp.pp.select_genes(bad)
    assert "cpnn_selected" not in bad.var


def test_select_genes_real_panels():
    sdata = cp.datasets.her2st(sections=["B4", "C3"], images=False)
    cp.pp.select_genes(sdata, genes=cp.datasets.histogene_genes())
    assert sdata["table"].var["cpnn_selected"].sum() == 785
    cp.pp.select_genes(sdata)
    sel = sdata["table"].var_names[sdata["table"].var["cpnn_selected"]]
    assert len(sel) == 250 and {"ERBB2", "KRT19"} <= set(sel)


def test_evaluate_known_values(rng):
    a = _adata(rng)
    a.var["cpnn_selected"] = True
    a.layers["perfect"] = a.X.copy()
    df = cp.tl.evaluate(a, layer="perfect", groupby="section")
    finite = df["spearman_mean"].dropna()
    assert np.allclose(finite, 1.0)
    assert {"spearman_A", "spearman_B", "pearson_A", "spearman_pooled", "pearson_pooled"} <= set(df.columns)
    assert a.uns["cpnn"]["metrics"]["perfect"]["spearman_pooled"] == pytest.approx(df["spearman_pooled"].mean())
    # a constant gene in one group is NaN there and counted
    X = a.X.toarray()
    X[:30, 0] = 5
    a.X = sparse.csr_matrix(X)
    a.layers["p"] = sparse.csr_matrix(rng.random(X.shape).astype(np.float32))
    df = cp.tl.evaluate(a, layer="p", normalize=False)
    assert np.isnan(df.loc["g0", "spearman_A"]) and np.isfinite(df.loc["g0", "spearman_B"])
    assert a.uns["cpnn"]["metrics"]["p"]["n_nan_per_group"]["A"] >= 1
    with pytest.raises(cp.CpnnError, match="layer="):
        cp.tl.evaluate(a, layer="missing")
    with pytest.raises(cp.CpnnError, match="groupby="):
        cp.tl.evaluate(a, layer="p", groupby="nope")


def test_metric_functions_against_scipy(rng):
    a = rng.integers(0, 4, size=(25, 6)).astype(float)  # ties
    b = rng.normal(size=(25, 6))
    a[:, 5] = 1.0  # constant
    sp = columnwise_spearman(a, b)
    pe = columnwise_pearson(a, b)
    for j in range(5):
        assert sp[j] == pytest.approx(stats.spearmanr(a[:, j], b[:, j]).statistic)
        assert pe[j] == pytest.approx(stats.pearsonr(a[:, j], b[:, j]).statistic)
    assert np.isnan(sp[5]) and np.isnan(pe[5])
    # a NaN propagates to its column only, as scipy's nan_policy="propagate"
    a[3, 2] = np.nan
    sp, pe = columnwise_spearman(a, b), columnwise_pearson(a, b)
    assert np.isnan(stats.spearmanr(a[:, 2], b[:, 2]).statistic) and np.isnan(sp[2]) and np.isnan(pe[2])
    assert sp[1] == pytest.approx(stats.spearmanr(a[:, 1], b[:, 1]).statistic)


def test_evaluate_rejects_nan_and_reports_constant_predictions(rng):
    a = _adata(rng)
    a.var["cpnn_selected"] = True
    X = a.X.toarray()
    a.layers["const"] = sparse.csr_matrix(np.ones_like(X))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" noise
        df = cp.tl.evaluate(a, layer="const")
    assert df["spearman_mean"].isna().all()
    assert np.isnan(a.uns["cpnn"]["metrics"]["const"]["spearman_per_group_mean"])
    bad = X.copy()
    bad[0, 0] = np.nan
    a.layers["nan"] = bad
    with pytest.raises(cp.CpnnError, match="NaN or infinite predictions"):
        cp.tl.evaluate(a, layer="nan")


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (12, 3), elements=st.floats(-1e3, 1e3, allow_nan=False)), st.integers(0, 10**6))
def test_spearman_properties(x, seed):
    """Bounded, symmetric, invariant to monotone transforms, odd under negation, invariant to permuting rows."""
    y = np.random.default_rng(seed).normal(size=x.shape)
    r = columnwise_spearman(x, y)
    ok = np.isfinite(r)
    assert (np.abs(r[ok]) <= 1 + 1e-12).all()
    np.testing.assert_allclose(r, columnwise_spearman(y, x), equal_nan=True)
    # monotone transforms that cannot merge distinct floats (arctan did, making the test flaky)
    np.testing.assert_allclose(r, columnwise_spearman(stats.rankdata(x, axis=0) ** 3, y), equal_nan=True, atol=1e-12)
    np.testing.assert_allclose(-r, columnwise_spearman(-x, y), equal_nan=True, atol=1e-12)
    perm = np.random.default_rng(seed + 1).permutation(x.shape[0])
    np.testing.assert_allclose(r, columnwise_spearman(x[perm], y[perm]), equal_nan=True, atol=1e-12)


def test_select_genes_unknown_layer(rng):
    a = _adata(rng)
    with pytest.raises(cp.CpnnError, match="layer='counts'"):
        cp.pp.select_genes(a, layer="counts")
