from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse

import cpnn as cp
from cpnn._core import panel_genes, panel_prototypes


def _simulate(rng, *, n_types=4, n_genes=150, n_cells=2400, batch=True):
    """NB counts from planted prototypes, with a planted per-batch gene effect confounded with type."""
    rates = rng.gamma(0.6, 1.0, size=(n_types, n_genes)) + 0.02
    rates /= rates.sum(1, keepdims=True)
    types = rng.integers(0, n_types, n_cells)
    # batch 1 holds mostly the first half of the types: confounding for the naive mean
    p_b1 = np.where(types < n_types // 2, 0.85, 0.15)
    batches = (rng.random(n_cells) < p_b1).astype(int) if batch else np.zeros(n_cells, int)
    effect = np.exp(rng.normal(0, 0.8, size=(2, n_genes))) if batch else np.ones((2, n_genes))
    effect /= np.exp(np.log(effect).mean(0, keepdims=True))  # centred, as the estimator reports
    lib = rng.lognormal(np.log(3000), 0.4, n_cells)
    mu = lib[:, None] * rates[types] * effect[batches]
    theta = 5.0
    counts = rng.negative_binomial(theta, theta / (theta + mu))
    names = [f"g{i}" for i in range(n_genes)]
    ref = ad.AnnData(
        sparse.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(
            {"ct": pd.Categorical([f"t{t}" for t in types]), "donor": pd.Categorical([f"d{b}" for b in batches])}
        ),
        var=pd.DataFrame(index=names),
    )
    ref.obs_names = [f"c{i}" for i in range(n_cells)]
    target = ad.AnnData(np.ones((5, n_genes), np.float32), var=pd.DataFrame(index=names))
    return ref, target, rates


def _log_pearson(est, truth):
    return [np.corrcoef(np.log(est[:, k] + 1e-12), np.log(truth[k]))[0, 1] for k in range(truth.shape[0])]


QC_OFF = {"max_mito_pct": None, "min_genes": None, "max_genes": None, "min_cells_per_gene": 0}


def test_nb_recovers_planted_prototypes_and_removes_batch(rng):
    ref, target, rates = _simulate(rng)
    cp.pp.build_prototypes(target, ref, cell_type_key="ct", batch_key="donor", method="nb", **QC_OFF)
    nb = target.varm["cpnn_prototypes"]
    assert target.uns["cpnn"]["cell_types"] == ["t0", "t1", "t2", "t3"]
    r_nb = _log_pearson(nb, rates)
    assert min(r_nb) > 0.99, r_nb
    # without the batch key, the confounded batch effect leaks into the prototypes
    no_batch = target.copy()
    cp.pp.build_prototypes(no_batch, ref, cell_type_key="ct", method="nb", **QC_OFF)
    r_nobatch = _log_pearson(no_batch.varm["cpnn_prototypes"], rates)
    mean = target.copy()
    cp.pp.build_prototypes(mean, ref, cell_type_key="ct", method="mean", **QC_OFF)
    r_mean = [np.corrcoef(mean.varm["cpnn_prototypes"][:, k], np.log(rates[k]))[0, 1] for k in range(4)]
    assert np.mean(r_nb) > np.mean(r_mean) + 0.03, (r_nb, r_mean)
    assert np.mean(r_nb) > np.mean(r_nobatch) + 0.02, (r_nb, r_nobatch)


def test_nb_scale_invariance(rng):
    """Doubling every library size leaves the prototypes' gene proportions unchanged."""
    ref, target, _ = _simulate(rng, batch=False, n_cells=800, n_genes=60)
    a, b = target.copy(), target.copy()
    cp.pp.build_prototypes(a, ref, cell_type_key="ct", **QC_OFF)
    ref2 = ref.copy()
    ref2.X = ref2.X * 2
    cp.pp.build_prototypes(b, ref2, cell_type_key="ct", **QC_OFF)
    pa, pb = a.varm["cpnn_prototypes"], b.varm["cpnn_prototypes"]
    np.testing.assert_allclose(pa / pa.sum(0), pb / pb.sum(0), rtol=0.05, atol=1e-4)


def test_real_reference_markers_and_atlas_agreement(her2st_all, cid4465):
    table = her2st_all["table"].copy()
    cp.pp.build_prototypes(table, cid4465, cell_type_key="celltype_major", method="nb")
    P = pd.DataFrame(table.varm["cpnn_prototypes"], index=table.var_names, columns=table.uns["cpnn"]["cell_types"])
    assert (P.to_numpy() >= 0).all()
    assert P.loc["EPCAM"].idxmax() in ("Cancer Epithelial", "Normal Epithelial")
    assert P.loc["KRT19"].idxmax() in ("Cancer Epithelial", "Normal Epithelial")
    immune = {"T-cells", "B-cells", "Myeloid", "Plasmablasts"}
    assert P.loc["PTPRC"].idxmax() in immune
    assert P.loc["COL1A1"].idxmax() == "CAFs"
    assert P.loc["PECAM1"].idxmax() == "Endothelial"
    assert P.loc["CD3E"].idxmax() == "T-cells"
    # each shared type correlates best with the same type of the atlas profiles
    prof = cp.datasets.wu2021_profiles()
    atlas = prof.T.groupby(pd.Series(prof.attrs["cell_type_map"])).mean().T
    genes = P.index[table.var["cpnn_in_reference"].to_numpy()].intersection(atlas.index)
    lp = np.log1p(P.loc[genes] / P.loc[genes].sum(0) * 1e4)
    la = np.log1p(atlas.loc[genes] / atlas.loc[genes].sum(0) * 1e4)
    for t in set(P.columns) & set(atlas.columns):
        r = {a: np.corrcoef(lp[t], la[a])[0, 1] for a in atlas.columns}
        assert max(r, key=r.get) == t, (t, r)


def test_profiles_reference_with_map(her2st_all):
    table = her2st_all["table"].copy()
    cp.pp.select_genes(table, n_top_genes=100)
    prof = cp.datasets.wu2021_profiles()
    cp.pp.build_prototypes(table, prof, cell_type_map=prof.attrs["cell_type_map"])
    assert len(table.uns["cpnn"]["cell_types"]) == 8
    assert table.uns["cpnn"]["prototypes"]["method"] == "profiles"
    sel = table.var["cpnn_selected"].to_numpy()
    assert (table.varm["cpnn_prototypes"][sel].sum(1) > 0).all()
    # the 76 states as a second set beside the 8 types: each keeps its own names and gene coverage
    cp.pp.build_prototypes(table, prof, key_added="states")
    assert len(table.uns["cpnn"]["cell_types"]) == 8
    assert len(table.uns["cpnn"]["prototype_sets"]["states"]["cell_types"]) == 76
    assert "states_in_reference" in table.var
    genes = panel_genes(table)
    P8, types8 = panel_prototypes(table, genes, "cpnn_prototypes")
    assert types8 == table.uns["cpnn"]["cell_types"]
    P76, types76 = panel_prototypes(table, genes, "states")
    assert P8.shape == (8, len(genes)) and P76.shape == (76, len(genes))
    assert types76 == list(prof.columns)
    # a var subset keeps the coverage flags aligned
    sub = table[:, genes].copy()
    np.testing.assert_array_equal(panel_prototypes(sub, genes, "states")[0], P76)


def test_missing_genes_leave_panel(rng):
    ref, target, _ = _simulate(rng, batch=False, n_cells=400, n_genes=40)
    target = ad.AnnData(np.ones((3, 50), np.float32), var=pd.DataFrame(index=[f"g{i}" for i in range(50)]))
    target.var["cpnn_selected"] = True
    cp.pp.build_prototypes(target, ref, cell_type_key="ct", method="mean", **QC_OFF)
    assert target.var["cpnn_selected"].sum() == 40
    assert not target.var["cpnn_in_reference"].iloc[45]
    assert target.uns["cpnn"]["prototypes"]["n_genes_missing"] == 10


def test_bad_inputs(rng):
    ref, target, _ = _simulate(rng, batch=False, n_cells=300, n_genes=30)
    with pytest.raises(cp.CpnnError, match="cell_type_key='nope'"):
        cp.pp.build_prototypes(target, ref, cell_type_key="nope")
    with pytest.raises(cp.CpnnError, match="cell_type_key is needed"):
        cp.pp.build_prototypes(target, ref)
    frac = ref.copy()
    frac.X = frac.X * 0.5
    with pytest.raises(cp.CpnnError, match="non-integer"):
        cp.pp.build_prototypes(target, frac, cell_type_key="ct", **QC_OFF)
    nan = ref.copy()
    nan.X = nan.X.toarray()
    nan.X[0, 0] = np.nan
    with pytest.raises(cp.CpnnError, match="NaN"):
        cp.pp.build_prototypes(target, nan, cell_type_key="ct", **QC_OFF)
    other = target.copy()
    other.var_names = [f"x{i}" for i in range(other.n_vars)]
    with pytest.raises(cp.CpnnError, match="share no gene"):
        cp.pp.build_prototypes(other, ref, cell_type_key="ct", **QC_OFF)
    one = ref.copy()
    one.obs["ct"] = "only"
    with pytest.raises(cp.CpnnError, match="at least two"):
        cp.pp.build_prototypes(target, one, cell_type_key="ct", **QC_OFF)
    with pytest.raises(cp.CpnnError, match="method="):
        cp.pp.build_prototypes(target, ref, cell_type_key="ct", method="median", **QC_OFF)
    with pytest.raises(cp.CpnnError, match="AnnData or a SpatialData"):
        cp.pp.build_prototypes(np.zeros(3), ref, cell_type_key="ct")
    before = target.copy()
    with pytest.raises(cp.CpnnError):
        cp.pp.build_prototypes(target, ref, cell_type_key="nope")
    assert set(target.var.columns) == set(before.var.columns) and "cpnn_prototypes" not in target.varm


def test_min_cells_drops_small_types(rng):
    ref, target, _ = _simulate(rng, batch=False, n_cells=400, n_genes=30)
    ref.obs["ct"] = ref.obs["ct"].astype(str)
    ref.obs.iloc[:5, ref.obs.columns.get_loc("ct")] = "rare"
    cp.pp.build_prototypes(target, ref, cell_type_key="ct", method="mean", min_cells=10, **QC_OFF)
    assert "rare" not in target.uns["cpnn"]["cell_types"]


def _prototype_frame(target, key="cpnn_prototypes"):
    return pd.DataFrame(target.varm[key], index=target.var_names, columns=target.uns["cpnn"]["cell_types"])


def _estimate(ref, method):
    target = ad.AnnData(np.ones((2, ref.n_vars), np.float32), var=pd.DataFrame(index=ref.var_names.copy()))
    cp.pp.build_prototypes(target, ref, cell_type_key="ct", method=method, min_cells=1, **QC_OFF)
    return _prototype_frame(target)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from(["nb", "mean"]))
def test_prototypes_equivariant_to_permutations(seed, method):
    """Permuting cells leaves the prototypes unchanged; permuting genes permutes them."""
    rng = np.random.default_rng(seed)
    ref, _, _ = _simulate(rng, n_types=3, n_genes=25, n_cells=150, batch=False)
    base = _estimate(ref, method)
    cells = rng.permutation(ref.n_obs)
    pd.testing.assert_frame_equal(_estimate(ref[cells].copy(), method), base, rtol=1e-4, atol=1e-8)
    genes = rng.permutation(ref.n_vars)
    permuted = _estimate(ref[:, genes].copy(), method)
    assert list(permuted.index) == list(ref.var_names[genes])
    pd.testing.assert_frame_equal(permuted.loc[base.index], base, rtol=1e-4, atol=1e-8)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 5))
def test_library_scaling_leaves_prototype_proportions(seed, factor):
    """Scaling every cell's counts (its library size) by an integer leaves each type's expression proportions:
    exactly for the naive mean of normalised counts, to within 2 % for the NB regression."""
    rng = np.random.default_rng(seed)
    ref, _, _ = _simulate(rng, n_types=3, n_genes=25, n_cells=150, batch=False)
    scaled = ref.copy()
    scaled.X = ref.X * factor

    def proportions(df):
        return df / df.sum(0)

    pd.testing.assert_frame_equal(_estimate(scaled, "mean"), _estimate(ref, "mean"), rtol=1e-5)
    nb, nb_scaled = proportions(_estimate(ref, "nb")), proportions(_estimate(scaled, "nb"))
    np.testing.assert_allclose(nb_scaled.to_numpy(), nb.to_numpy(), rtol=0.02, atol=1e-4)
