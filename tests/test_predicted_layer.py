"""The predicted layer cannot be misread: depth-free, one encoding of "not predicted" (issue #26)."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

import cpnn as cp

from ._synthetic import synthetic_sdata

KW = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0, "epochs": 20, "context_um": 0}


@pytest.fixture(scope="module")
def fitted():
    sdata, profiles = synthetic_sdata(np.random.default_rng(5), sections=("S1", "S2"))
    cp.pp.select_genes(sdata, n_top_genes=60)
    cp.pp.build_prototypes(sdata, profiles)
    model = cp.tl.fit(sdata, train=["S1"], **KW)
    return sdata, model


def test_layer_is_depth_free(fitted):
    sdata, model = fitted
    table = sdata["table"]
    cp.tl.predict(sdata, model, regions=["S2"], measured_depth=True)
    s2 = np.flatnonzero(table.obs["section"].to_numpy() == "S2")
    cols = table.var_names.get_indexer(model.genes)
    layer = table.layers["cpnn"][s2][:, cols].toarray()
    before = layer.copy()
    # every spot at the model's median training library
    np.testing.assert_allclose(layer.sum(1), model.config.median_library, rtol=1e-4)
    assert table.uns["cpnn"]["predict"]["library"] == pytest.approx(model.config.median_library)
    # planted sequencing depths (x0.1 .. x10 per spot) change the measured-depth layer, never the layer
    depth = np.random.default_rng(0).uniform(0.1, 10.0, size=len(s2))
    X = table.X.tolil()
    for i, d in zip(s2, depth, strict=True):
        X[i] = np.round(X[i].toarray() * d)
    original = table.X
    table.X = X.tocsr()
    try:
        cp.tl.predict(sdata, model, regions=["S2"], measured_depth=True)
        np.testing.assert_allclose(table.layers["cpnn"][s2][:, cols].toarray(), before, rtol=1e-5)
        scaled = table.layers["cpnn_measured_depth"][s2][:, cols].toarray()
        lib = np.asarray(table.X[s2][:, cols].sum(1)).ravel()
        np.testing.assert_allclose(scaled.sum(1), lib, rtol=1e-4)
        assert np.corrcoef(scaled.sum(1), lib)[0, 1] > 0.99
    finally:
        table.X = original


def test_not_predicted_is_nan_everywhere(fitted):
    sdata, model = fitted
    table = sdata["table"]
    for key in ("nan", "nan_measured_depth"):
        table.layers.pop(key, None)
    cp.tl.predict(sdata, model, regions=["S2"], key_added="nan")
    s1 = table.obs["section"].to_numpy() == "S1"
    cols = table.var_names.get_indexer(model.genes)
    layer = table.layers["nan"]
    assert sparse.issparse(layer)
    assert np.isnan(layer[np.flatnonzero(s1)][:, cols].toarray()).all()
    assert np.isfinite(layer[np.flatnonzero(~s1)][:, cols].toarray()).all()
    others = np.setdiff1d(np.arange(table.n_vars), cols)
    assert (layer[:, others].toarray() == 0).all()  # genes outside the panel: not predicted, 0
    assert table.obsm["nan_proportions"].loc[s1].isna().all().all()
    assert not table.obs["nan_predicted"].to_numpy()[s1].any()
    # predicting S1 later keeps S2's predictions and fills S1
    cp.tl.predict(sdata, model, regions=["S1"], key_added="nan")
    assert np.isfinite(table.layers["nan"][:, cols].toarray()).all()
    # scanpy works on the predicted spots as the docs say
    cp.tl.predict(sdata, model, regions=["S2"], key_added="sub")
    pred = table[table.obs["sub_predicted"].to_numpy()].copy()
    sc.pp.neighbors(pred, use_rep="sub_proportions", n_neighbors=5)
    assert pred.obsp["connectivities"].shape == (pred.n_obs, pred.n_obs)
    # evaluating spots that were never predicted names the mask that keeps the predicted ones (#38)
    with pytest.raises(
        cp.CpnnError, match=r"144 of the 288 spots in spots= were never predicted.*adata.obs\['sub_predicted'\]"
    ):
        cp.tl.evaluate(sdata, layer="sub", spots=np.ones(table.n_obs, bool))
    assert cp.tl.evaluate(sdata, layer="sub", spots=table.obs["sub_predicted"].to_numpy()).shape[0] == len(model.genes)
