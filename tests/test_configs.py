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
    published = {"residual": 0.0, "loss": "nb", "comp_reg": 1e3}
    assert {k: PRESETS["paper"]["head"][k] for k in published} == published
    assert PRESETS["paper"]["data"] == {"context_um": None}
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
    assert default.config["preset"] == "cpnn" and default.config["loss"] == cp.models.CPNNOptions().loss == "mse"
    assert default.config["context_um"] == cp.tl.DataOptions().context_um == 150.0
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
    from cpnn.pp._embed import within_reach

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


def test_each_option_is_one_field_of_the_record_its_consumer_reads():
    """#40: fit takes at most 20 parameters, no locals(); every other option is one field of one record."""
    import ast
    import inspect
    from pathlib import Path

    from cpnn.tl._config import records

    params = inspect.signature(cp.tl.fit).parameters
    assert len(params) <= 20
    assert not [p for p in inspect.signature(cp.tl.predict).parameters if p.startswith("_")]
    groups = {h: records(h) for h in cp.models.HEADS}
    owners: dict[str, set] = {}
    for recs in groups.values():
        for group, rec in recs.items():
            for name in rec.names():
                owners.setdefault(name, set()).add(group)
    assert all(len(g) == 1 for g in owners.values()), {n: g for n, g in owners.items() if len(g) > 1}
    assert not set(owners) & set(params), "an option both in fit's signature and in a record"
    tl = Path(cp.__file__).parent / "tl"
    calls = [
        f"{p.name}:{n.lineno}" for p in tl.glob("*.py") for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "locals"
    ]  # fmt: skip
    assert not calls
    # the docstring documents every field, each once
    doc = cp.tl.fit.__doc__
    for name in owners:
        if name not in ("encoder_weights",):
            assert doc.count(f"``{name}`` (") == 1, name


def test_flat_keywords_still_work_with_a_future_warning(synthetic):
    """#40: fit(epochs=3, comp_reg=0) is fit(train_kwargs={"epochs": 3}, head_kwargs={"comp_reg": 0}), warned."""
    sdata, _ = synthetic
    kw = {"encoder": "handcrafted", "train": ["S1"], "seed": 0}
    moved = r"pass train_kwargs=\{'epochs': 3, 'lr': 0.003\}, head_kwargs=\{'comp_reg': 0\}, data_kwargs="
    with pytest.warns(FutureWarning, match=moved + r".* instead of epochs=, lr=, comp_reg=.*until cpnn 0.5"):
        old = cp.tl.fit(sdata, epochs=3, lr=3e-3, comp_reg=0, context_um=0, patch_size_um=32, patch_px=32, **kw)
    new = cp.tl.fit(
        sdata, train_kwargs={"epochs": 3, "lr": 3e-3}, head_kwargs={"comp_reg": 0}, data_kwargs={"context_um": 0},
        encoder_kwargs={"patch_size_um": 32, "patch_px": 32}, **kw,
    )  # fmt: skip
    assert old.config == new.config and old.history == new.history
    assert new.config.training.epochs == 3 and new.config["comp_reg"] == 0
    with pytest.raises(CpnnError, match=r"passed both flat and in train_kwargs="):
        cp.tl.fit(sdata, epochs=3, train_kwargs={"epochs": 4}, **kw)
    with pytest.raises(CpnnError, match=r"head_kwargs= has no option \['epochs'\]; its options are"):
        cp.tl.fit(sdata, head_kwargs={"epochs": 4}, **kw)
    with pytest.raises(TypeError, match="unexpected keyword"):
        cp.tl.fit(sdata, epoch=3, **kw)
    with pytest.raises(CpnnError, match=r"loss='poisson'; use one of \['nb', 'mse'\]"):
        cp.tl.fit(sdata, head_kwargs={"loss": "poisson"}, **kw)


def test_a_preset_is_a_partial_over_the_records():
    """#40: the paper preset sets fields of the head, training and data records; the user's value wins."""
    from cpnn.tl._config import resolve_config

    base = {
        "head": "cpnn", "encoder": "handcrafted", "encoder_kwargs": None, "finetune": False, "data_kwargs": None,
        "level": None, "slides": None, "seed": 0, "flat": {},
    }  # fmt: skip
    paper = resolve_config(preset="paper", head_kwargs=None, train_kwargs={"lr": 0.5}, **base)
    assert paper.training.batch_size == 8 and paper.training.precision == "fp32" and paper.training.lr == 0.5
    assert paper.head_options.loss == "nb" and paper.head_options.init == "xavier" and paper.data.context_um is None
    default = resolve_config(preset="cpnn", head_kwargs=None, train_kwargs=None, **base)
    assert default.head_options == cp.models.CPNNOptions() and default.training == cp.tl.TrainOptions()
    direct = resolve_config(preset="paper", head_kwargs=None, train_kwargs=None, **{**base, "head": "direct"})
    assert direct.head_options == cp.models.MLPOptions(init="xavier")  # the paper's loss is not the direct head's
    # an old model file's missing options take the values it was trained with (explicit migration)
    old = cp.tl.FitConfig.from_dict({"head": "cpnn", "genes": ["g"], "cell_types": ["t"]})
    assert old.preset == "paper" and old.training.epochs == 300 and old.head_options.loss == "nb"
    assert old.data.context_um is None and old.head_options.targets == "given"
