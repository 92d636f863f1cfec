"""preset="paper" is the authors' training recipe: each point on planted data (issue #30)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cpnn as cp
from cpnn.models import CPNNHead
from cpnn.tl._config import PRESETS

from ._synthetic import synthetic_sdata

KW = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0}


@pytest.fixture(scope="module")
def planted():
    sdata, profiles = synthetic_sdata(np.random.default_rng(11), sections=("S1", "S2", "S3"))
    cp.pp.select_genes(sdata, n_top_genes=60)
    cp.pp.build_prototypes(sdata, profiles)
    cp.pp.embed(sdata, encoder="handcrafted", patch_size_um=32, patch_px=32)
    return sdata


def test_paper_resolves_to_the_reference_recipe(planted):
    table = planted["table"]
    model = cp.tl.fit(planted, train=["S1"], validation=["S2"], preset="paper", epochs=3, **KW)
    c = model.config
    # raw inputs, 8 spots a step, patience 30, xavier init, alpha from the scaling, composition loss on
    assert (c["standardise"], c["batch_size"], c["patience"], c["init"], c["alpha_init"]) == (
        False,
        8,
        30,
        "xavier",
        "scaling",
    )
    assert PRESETS["paper"]["train"]["epochs"] == 1000 and c["epochs"] == 3  # explicit options override the preset
    assert torch.all(model.head.standardise.mean == 0) and torch.all(model.head.standardise.std == 1)
    # the training spots were deconvolved for the composition loss, and nothing else
    assert c["composition_key"] == "cpnn_targets" and c["comp_reg"] == 1e3
    targets = table.obsm["cpnn_targets"]
    train = table.obs["section"].to_numpy() == "S1"
    assert np.isfinite(targets.to_numpy()[train]).all() and np.isnan(targets.to_numpy()[~train]).all()
    # the default preset keeps its own recipe, and explicit options override either
    default = cp.tl.fit(planted, train=["S1"], epochs=2, **KW)
    d = default.config
    assert PRESETS["cpnn"] == {}  # the records' defaults
    assert (d["standardise"], d["batch_size"], d["lr"], d["init"]) == (
        cp.models.CPNNOptions().standardise,
        cp.tl.TrainOptions().batch_size,
        cp.tl.TrainOptions().lr,
        "torch",
    )
    assert d["composition_key"] == "cpnn_targets"  # the default supervises the composition too
    scaled = cp.tl.fit(planted, train=["S1"], epochs=2, standardise=True, batch_size=32, **KW)
    assert scaled.config["standardise"] is True and scaled.config["batch_size"] == 32
    assert not torch.all(scaled.head.standardise.std == 1)  # fitted on the training spots
    with pytest.raises(cp.CpnnError, match="init="):
        cp.tl.fit(planted, train=["S1"], epochs=1, init="he", **KW)


def test_alpha_starts_from_the_deconvolution_gene_scaling(planted):
    table = planted["table"]
    cp.pp.deconvolve(planted, regions=["S1"], key_added="own_targets")
    record = table.uns["cpnn"]["deconvolution"]["own_targets"]
    scaling = dict(zip(record["genes"], record["gene_scaling"], strict=True))
    assert np.isclose(np.exp(np.mean(np.log(record["gene_scaling"]))), 1.0, atol=1e-4)  # geometric mean 1
    # a learning rate too small to move anything: the weights are their initial values
    model = cp.tl.fit(planted, train=["S1"], preset="paper", composition_key="own_targets", epochs=1, lr=1e-12, **KW)
    alpha = np.exp(model.head.alpha.detach().numpy())
    expected = np.array([scaling.get(g, 1.0) for g in model.genes])
    np.testing.assert_allclose(alpha, expected, rtol=1e-4)
    assert np.ptp(expected) > 0.01  # the scaling is not all ones
    flat = cp.tl.fit(planted, train=["S1"], preset="paper", composition_key="own_targets", epochs=1, lr=1e-12,
                     alpha_init="one", **KW)  # fmt: skip
    np.testing.assert_allclose(flat.head.alpha.detach().numpy(), 0.0, atol=1e-6)


def test_xavier_initialisation_and_dispersion():
    torch.manual_seed(0)
    protos = np.random.default_rng(0).gamma(1.0, 1.0, (4, 30)) + 0.1
    paper = CPNNHead(16, protos, init="xavier")
    default = CPNNHead(16, protos)
    assert torch.all(default.log_theta == 2.0)
    assert (
        abs(float(paper.log_theta.detach().mean())) < 0.5 and 0.6 < float(paper.log_theta.detach().std()) < 1.4
    )  # ~ N(0, 1)
    w = paper.mlp[0].weight.detach()
    fan_in, fan_out = w.shape[1], w.shape[0]
    assert abs(float(w.std()) - np.sqrt(2.0 / (fan_in + fan_out))) < 0.01  # xavier-normal
    assert abs(float(default.mlp[0].weight.detach().std()) - np.sqrt(2.0 / (fan_in + fan_out))) > 0.01


def test_validation_criterion_is_the_nb_at_1e4_without_regularisers():
    torch.manual_seed(0)
    protos = np.random.default_rng(1).gamma(1.0, 1.0, (3, 20)) + 0.1
    head = CPNNHead(8, protos, init="xavier", proto_reg=1e3, comp_reg=1e3)
    with torch.no_grad():
        head.log_prototypes.add_(0.5 * torch.randn(3, 20))  # the prototype regulariser is far from 0 now
    z = torch.randn(5, 8)
    counts = torch.poisson(torch.full((5, 20), 30.0))
    library = counts.sum(1)
    out = head(z)
    # the reference criterion, written with torch's own distribution
    theta = torch.exp(head.log_theta)
    scaled = counts / library[:, None] * 1e4
    mu = out["proportions"] * 1e4
    dist = torch.distributions.NegativeBinomial(
        total_count=theta, logits=torch.log(mu) - torch.log(theta), validate_args=False
    )  # non-integer rescaled counts, as the reference evaluates them
    expected = -dist.log_prob(scaled).sum(-1).mean()
    got = head.criterion(out, counts, library)
    assert torch.isclose(got, expected, rtol=1e-4)
    # depth-free: the same composition of counts at twice the depth scores the same
    assert torch.isclose(head.criterion(out, 2 * counts, 2 * library), got, rtol=1e-5)
    # the training loss adds the regularisers; the criterion does not
    comp = torch.eye(3)[[0, 1, 2, 0, 1]]
    with torch.no_grad():
        data = float(head._data_term(out, counts, library, None))
        assert float(head.loss(out, counts, library)) > data + 1e-3  # the prototype regulariser
        assert float(head.loss(out, counts, library, comp)) > data + 100  # and the composition loss


def test_targets_are_reused_for_the_same_training_spots_and_remade_for_others(planted, monkeypatch):
    from cpnn.tl import _targets

    table = planted["table"]
    calls = []
    real = _targets.deconvolve
    monkeypatch.setattr(_targets, "deconvolve", lambda *a, **k: calls.append(k["regions"].sum()) or real(*a, **k))
    cp.tl.fit(planted, train=["S1"], preset="paper", epochs=1, key_added="r", **KW)
    first = table.obsm["r_targets"].copy()
    cp.tl.fit(planted, train=["S1"], preset="paper", epochs=1, key_added="r", **KW)
    assert len(calls) == 1  # the second fit reused the first one's targets
    np.testing.assert_array_equal(table.obsm["r_targets"].to_numpy(), first.to_numpy())
    cp.tl.fit(planted, train=["S2"], preset="paper", epochs=1, key_added="r", **KW)
    s2 = table.obs["section"].to_numpy() == "S2"
    assert np.isfinite(table.obsm["r_targets"].to_numpy()[s2]).all()
    assert np.isnan(table.obsm["r_targets"].to_numpy()[~s2]).all()
    # no composition loss asked: nothing deconvolved
    model = cp.tl.fit(planted, train=["S1"], preset="paper", epochs=1, comp_reg=0, key_added="none", **KW)
    assert model.config["composition_key"] is None and "none_targets" not in table.obsm


def test_paper_recipe_learns_planted_compositions(planted):
    """The whole recipe, early stopping on the NB at 1e4, recovers planted compositions on held-out spots."""
    table = planted["table"]
    model = cp.tl.fit(planted, train=["S1"], validation=["S2"], preset="paper", epochs=150, lr=3e-3, **KW)
    cp.tl.predict(planted, model, regions=["S3"], key_added="pp")
    held = table.obs["section"].to_numpy() == "S3"
    truth, props = table.obsm["truth"].loc[held], table.obsm["pp_proportions"].loc[held]
    r = np.mean([np.corrcoef(props[t], truth[t])[0, 1] for t in truth.columns])
    assert r > 0.8, r
    history = table.uns["cpnn"]["history"]
    assert np.all(np.isfinite(history["val_loss"]))


def test_raw_features_on_a_saturating_scale_are_reported(cpnn_log):
    from cpnn.tl._fit import _check_raw_scale

    _check_raw_scale(torch.rand(50, 8))  # unit scale: silent
    assert "standardise" not in cpnn_log()
    _check_raw_scale(torch.rand(50, 8) * 1000)
    assert "head_kwargs={'standardise': True}" in cpnn_log()


def test_the_paper_preset_trains_in_float32_and_the_default_in_bf16():
    """The authors' code trains without autocast on CUDA; cpnn's default uses bf16 there (a no-op on the CPU)."""
    from cpnn._core import autocast
    from cpnn.tl._config import PRESETS, FitConfig

    assert PRESETS["paper"]["train"]["precision"] == "fp32" and cp.tl.TrainOptions().precision == "bf16"
    # model files written before the field trained with bf16 on CUDA
    assert FitConfig.from_dict({"head": "cpnn"}).training.precision == "bf16"
    assert not isinstance(autocast("cuda", enabled=False), torch.autocast)
    with warnings.catch_warnings():  # torch says autocast is disabled where CUDA is absent
        warnings.simplefilter("ignore", UserWarning)
        assert isinstance(autocast("cuda"), torch.autocast)
    assert not isinstance(autocast("cpu"), torch.autocast)
