"""The accuracy switches of cp.tl.fit: residual path, spatial context, finer prototypes, loss, presets."""

from __future__ import annotations

import numpy as np
import pytest

import cpnn as cp
from cpnn._errors import CpnnError
from cpnn.tl._fit import PRESETS

from ._synthetic import synthetic_sdata

KW = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "lr": 3e-3, "seed": 0}


@pytest.fixture(scope="module")
def synthetic():
    sdata, profiles = synthetic_sdata(np.random.default_rng(3), sections=("S1", "S2"))
    cp.pp.select_genes(sdata, n_top_genes=60)
    cp.pp.build_prototypes(sdata, profiles)
    cp.pp.embed(sdata, encoder="handcrafted", patch_size_um=32, patch_px=32)
    return sdata, profiles


def _fit_predict(sdata, key, **kw):
    model = cp.tl.fit(sdata, train=["S1"], epochs=60, **{**KW, **kw})
    cp.tl.predict(sdata, model, regions=["S2"], key_added=key)
    return model


def _composition_r(table, key) -> float:
    held = table.obs["section"].to_numpy() == "S2"
    truth, props = table.obsm["truth"].loc[held], table.obsm[f"{key}_proportions"].loc[held]
    return float(np.mean([np.corrcoef(props[t], truth[t])[0, 1] for t in truth.columns]))


def test_paper_preset_is_the_published_model(synthetic, tmp_path):
    sdata, _ = synthetic
    table = sdata["table"]
    published = {"residual": 0.0, "context_um": None, "loss": "nb", "comp_reg": 1e3}
    assert {k: PRESETS["paper"][k] for k in published} == published
    model = _fit_predict(sdata, "paper", preset="paper")
    c = model.config
    assert (c["residual"], c["context_um"], c["loss"], c["preset"]) == (0.0, None, "nb", "paper")
    assert not hasattr(model.head, "residual_mlp")
    assert table.uns["cpnn"]["predict"]["composition_share"] == 1.0
    # an explicit option overrides the preset
    other = cp.tl.fit(sdata, train=["S1"], epochs=2, preset="paper", loss="mse", **KW)
    assert other.config["loss"] == "mse" and other.config["preset"] == "paper"
    # the default preset differs from the paper, and its spatial context is left out where it cannot apply
    default = cp.tl.fit(sdata, train=["S1"], epochs=2, **KW)
    assert default.config["preset"] == "cpnn" and default.config["loss"] == PRESETS["cpnn"]["loss"]
    assert default.config["context_um"] == PRESETS["cpnn"]["context_um"]
    assert (default.config["comp_reg"], c["comp_reg"]) == (1e4, 1e3)
    assert PRESETS["cpnn"] != PRESETS["paper"]
    off = cp.tl.fit(sdata, train=["S1"], epochs=2, context_um=0, **KW)
    assert off.config["context_um"] is None
    tuned = cp.tl.fit(sdata, train=["S1"], epochs=1, finetune=True, encoder="resnet18", patch_size_um=32, patch_px=32)
    assert tuned.config["context_um"] is None
    with pytest.raises(CpnnError, match="context_um"):
        cp.tl.fit(sdata, train=["S1"], epochs=1, finetune=True, encoder="resnet18", context_um=100.0)
    with pytest.raises(CpnnError, match="preset"):
        cp.tl.fit(sdata, preset="best", **KW)


def test_residual_path_reports_composition_share(synthetic, tmp_path):
    sdata, _ = synthetic
    table = sdata["table"]
    model = _fit_predict(sdata, "res", residual=1.0)
    share = table.var["res_composition_share"]
    panel = table.var["cpnn_selected"].to_numpy(bool)
    assert share[panel].between(0, 1).all() and share[~panel].isna().all()
    overall = table.uns["cpnn"]["predict"]["composition_share"]
    assert 0.0 <= overall <= 1.0 and np.isclose(overall, share[panel].mean())
    # the residual starts at zero and is penalised: on data made of cell types it stays small
    assert overall > 0.5, overall
    assert _composition_r(table, "res") > 0.85
    model.save(tmp_path / "res.pt")
    loaded = cp.CPNN.load(tmp_path / "res.pt")
    cp.tl.predict(sdata, loaded, regions=["S2"], key_added="res2")
    np.testing.assert_allclose(table.layers["res2"].toarray(), table.layers["res"].toarray(), rtol=1e-5)
    with pytest.raises(CpnnError, match="residual"):
        cp.tl.fit(sdata, residual=-1, **KW)


def test_spatial_context_and_mse_loss(synthetic):
    sdata, _ = synthetic
    table = sdata["table"]
    model = _fit_predict(sdata, "ctx", context_um=45.0, loss="mse")
    assert model.config["in_dim"] == 2 * table.obsm["cpnn_embedding"].shape[1]
    assert _composition_r(table, "ctx") > 0.8
    # a radius smaller than the spot pitch keeps each spot alone: its context is itself
    from cpnn.data import add_context

    z = np.arange(12, dtype=np.float32).reshape(6, 2)
    xy = np.c_[np.arange(6) * 40.0, np.zeros(6)]
    same = add_context(z, xy, np.array(["a"] * 6), 10.0)
    np.testing.assert_array_equal(same[:, 2:], z)
    pairs = add_context(z, xy, np.array(["a"] * 6), 45.0)
    np.testing.assert_allclose(pairs[0, 2:], z[:2].mean(0))
    np.testing.assert_allclose(pairs[2, 2:], z[1:4].mean(0))
    split = add_context(z, xy, np.array(["a", "a", "a", "b", "b", "b"]), 45.0)
    np.testing.assert_allclose(split[2, 2:], z[1:3].mean(0))  # neighbours never cross regions
    with pytest.raises(CpnnError, match="context_um"):
        cp.tl.fit(sdata, context_um=-5, **KW)
    with pytest.raises(CpnnError, match="loss"):
        cp.tl.fit(sdata, loss="poisson", **KW)


def test_context_embeds_only_the_reach_of_the_predicted_spots(synthetic):
    """#39: predicting 5 spots with a spatial context reads their neighbours, not the whole region, with
    the same result (300 dense tiles of B4: 910 tiles embedded instead of 27,604; 131 s -> 7 s)."""
    from cpnn.tl._inputs import within_reach

    sdata, _ = synthetic
    table = sdata["table"]
    model = cp.tl.fit(sdata, train=["S1"], epochs=20, context_um=45.0, **KW)
    cp.tl.predict(sdata, model, regions=["S2"], key_added="all")
    few = np.zeros(table.n_obs, bool)
    few[np.flatnonzero(table.obs["section"].to_numpy() == "S2")[:5]] = True
    cp.tl.predict(sdata, model, regions=few, key_added="few")
    np.testing.assert_allclose(
        table.obsm["few_proportions"].to_numpy()[few], table.obsm["all_proportions"].to_numpy()[few], rtol=1e-5
    )
    xy = np.c_[np.arange(6) * 40.0, np.zeros(6)]
    first = np.array([True, False, False, False, False, False])
    assert within_reach(xy, np.array(["a"] * 6), first, 45.0).tolist() == [True, True] + [False] * 4
    assert within_reach(xy, np.array(["a", "b", "a", "a", "a", "a"]), first, 45.0).tolist() == [True] + [False] * 5


def test_fine_prototypes_summed_to_groups(synthetic):
    sdata, profiles = synthetic
    table = sdata["table"]
    cp.pp.build_prototypes(sdata, profiles, groups={"t0": "AB", "t1": "AB", "t2": "C"}, key_added="fine")
    assert table.uns["cpnn"]["prototype_sets"]["fine"]["groups"] == {"t0": "AB", "t1": "AB", "t2": "C"}
    model = _fit_predict(sdata, "fine", prototypes_key="fine")
    assert model.cell_types == ["t0", "t1", "t2"] and model.groups["t1"] == "AB"
    coarse, fine = table.obsm["fine_proportions"], table.obsm["fine_proportions_fine"]
    assert list(coarse.columns) == ["AB", "C"] and list(fine.columns) == ["t0", "t1", "t2"]
    held = table.obs["section"].to_numpy() == "S2"
    np.testing.assert_allclose(coarse.loc[held, "AB"], fine.loc[held, ["t0", "t1"]].sum(1), rtol=1e-5)
    with pytest.raises(CpnnError, match="groups"):
        cp.pp.build_prototypes(sdata, profiles, groups={"t0": "AB"}, key_added="bad")


def test_each_fit_option_is_written_once_in_the_signature_and_once_in_fitconfig():
    """#28: an option of fit is a FitConfig field (or says where the data is / how to run, or builds the encoder)."""
    import inspect
    from dataclasses import fields

    from cpnn.tl._config import DERIVED, ENCODER_OPTIONS, RUN_OPTIONS, FitConfig

    params = set(inspect.signature(cp.tl.fit).parameters)
    names = {f.name for f in fields(FitConfig)}
    others = set(RUN_OPTIONS) | set(ENCODER_OPTIONS) | {"slides"}
    assert params - names - others == set(), "fit options with no FitConfig field"
    assert names - set(DERIVED) - params == set(), "FitConfig fields that are no fit option"
    assert not (set(RUN_OPTIONS) | set(ENCODER_OPTIONS)) & names
