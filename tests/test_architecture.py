"""The training path's seams: head and encoder registries, the ridge head, one configuration record, old files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cpnn as cp
from cpnn._core import lognorm_torch
from cpnn.models.heads import Standardise
from cpnn.tl._config import FitConfig

from ._synthetic import synthetic_sdata

DATA = Path(__file__).parent / "data"
KW = {"patch_size_um": 32, "patch_px": 32, "seed": 0}
NO_CONTEXT = {"context_um": 0}


@pytest.fixture(scope="module")
def synthetic():
    sdata, profiles = synthetic_sdata(np.random.default_rng(2), sections=("S1", "S2", "S3"))
    cp.pp.select_genes(sdata, n_top_genes=60)
    cp.pp.build_prototypes(sdata, profiles)
    return sdata, profiles


@pytest.fixture
def toys():
    """A toy encoder (mean colour) and a toy head (one linear layer), added through the registries only."""

    class MeanColour(cp.models.Encoder):
        trainable = False

        def __init__(self) -> None:
            super().__init__()
            self.out_dim = 3

        @classmethod
        def from_config(cls, config):
            return cls()

        def forward(self, x):
            return x.mean((2, 3))

    class Linear(cp.models.Head):
        def __init__(self, in_dim: int, n_genes: int) -> None:
            super().__init__()
            self.standardise = Standardise(in_dim)
            self.linear = nn.Linear(in_dim, n_genes)

        @classmethod
        def from_config(cls, config, in_dim, prototypes):
            return cls(in_dim, len(config["genes"]))

        def forward(self, z):
            log_norm = self.linear(self.standardise(z))
            expr = torch.expm1(log_norm.clamp(0, 20))
            return {"log_norm": log_norm, "proportions": expr / expr.sum(-1, keepdim=True).clamp_min(1e-12)}

        def loss(self, out, counts, library, composition=None, sample=None):
            return torch.mean((out["log_norm"] - lognorm_torch(counts, library)) ** 2)

    cp.models.register_encoder("toy_mean_colour")(MeanColour)
    cp.models.register_head("toy_linear")(Linear)
    yield
    cp.models.ENCODERS.remove("toy_mean_colour")
    cp.models.HEADS.remove("toy_linear")


def test_toy_head_and_encoder_fit_predict_save_load(synthetic, toys, tmp_path):
    sdata, _ = synthetic
    table = sdata["table"]
    model = cp.tl.fit(
        sdata,
        head="toy_linear",
        encoder="toy_mean_colour",
        train=["S1"],
        validation=["S2"],
        epochs=80,
        lr=1e-2,
        standardise=True,  # mean colours vary by a few hundredths: z-scored, 80 steps suffice
        **KW,
    )
    assert model.config["head"] == "toy_linear" and not model.has_composition and model.cell_types == []
    cp.tl.predict(sdata, model, regions=["S3"], key_added="toy", embedding_key="toy_z")
    assert "toy_proportions" not in table.obsm
    df = cp.tl.evaluate(sdata, layer="toy")
    # mean colour is linear in the planted composition, so a linear head predicts the genes
    assert df["spearman_mean"].mean() > 0.5
    model.save(tmp_path / "toy.pt")
    again = cp.CPNN.load(tmp_path / "toy.pt")
    cp.tl.predict(sdata, again, regions=["S3"], key_added="toy2", embedding_key="toy_z")
    np.testing.assert_array_equal(table.layers["toy2"].toarray(), table.layers["toy"].toarray())
    with pytest.raises(cp.CpnnError, match="has no weights to fine-tune"):
        cp.tl.fit(sdata, head="toy_linear", encoder="toy_mean_colour", finetune=True, **KW)


def test_a_toy_input_kind_plugs_in_from_outside(synthetic, tmp_path):
    """28: a new input kind is one Level and one builder, registered from outside the package.

    The toy reads each spot's embedding from a memory-mapped ``.npy`` file (embeddings computed
    by another pipeline) instead of ``obsm``; the fit must equal the built-in spot level's.
    """
    from cpnn.tl import _inputs, _levels

    sdata, _ = synthetic
    table = sdata["table"]
    cp.pp.embed(sdata, encoder="handcrafted", **KW)
    np.save(tmp_path / "z.npy", np.asarray(table.obsm["cpnn_embedding"], dtype=np.float32))
    calls = []

    def memmap_inputs(data, adata, config, split, encoder, **_):
        calls.append(config.level)
        z = np.load(tmp_path / "z.npy", mmap_mode="r")
        x_va = torch.as_tensor(np.array(z[split.validation])) if split.validation.any() else None
        train, val = _inputs._spot_datasets(split, torch.as_tensor(np.array(z[split.train])), x_va)
        return _inputs.Inputs(train, val, z.shape[1], nn.Identity(), config.encoder_config)

    _levels.LEVELS["toy_memmap"] = _levels.Level("toy_memmap", "spots", bags=False, builder="toy_memmap")
    _inputs.BUILDERS["toy_memmap"] = memmap_inputs
    try:
        kw = {"encoder": "handcrafted", "train": ["S1"], "validation": ["S2"], "epochs": 5, **NO_CONTEXT, **KW}
        toy = cp.tl.fit(sdata, level="toy_memmap", key_added="toy_in", **kw)
        built_in = cp.tl.fit(sdata, key_added="built_in", **kw)
    finally:
        del _levels.LEVELS["toy_memmap"], _inputs.BUILDERS["toy_memmap"]
    assert calls == ["toy_memmap"] and toy.level == "toy_memmap"
    assert toy.history == built_in.history  # the same rows, the same numbers, through the new kind
    with pytest.raises(cp.CpnnError, match=r"level='toy_memmap'; use one of \['spot', 'slide'\]"):
        cp.tl.fit(sdata, level="toy_memmap", **kw)  # unregistered again


def test_unknown_names_list_the_registry(synthetic):
    sdata, _ = synthetic
    with pytest.raises(cp.CpnnError, match=r"head='mlp' is not a registered head; choose one of \['cpnn', 'direct'"):
        cp.tl.fit(sdata, head="mlp")
    with pytest.raises(cp.CpnnError, match="register_head"):
        cp.tl.fit(sdata, head="mlp")


def test_ridge_head_matches_sklearn(synthetic):
    from sklearn.linear_model import Ridge, RidgeCV

    sdata, _ = synthetic
    table = sdata["table"]
    cp.pp.embed(sdata, encoder="handcrafted", **KW)
    model = cp.tl.fit(sdata, head="ridge", encoder="handcrafted", train=["S1"], validation=["S2"], **KW, **NO_CONTEXT)
    assert model.history[0]["alpha"] in [10.0**k for k in range(-1, 5)]
    cp.tl.predict(sdata, model, regions=["S3"], key_added="ridge")
    genes = model.genes
    sec = table.obs["section"].to_numpy()
    z = np.asarray(table.obsm["cpnn_embedding"], float)
    y = cp._core.lognorm(table[:, genes].X.toarray().astype(float))
    mu, sd = z[sec == "S1"].mean(0), z[sec == "S1"].std(0) + 1e-6

    def scale(a):
        return (a - mu) / sd

    errs = {}
    for alpha in 10.0 ** np.arange(-1, 5):
        fitted = Ridge(alpha=alpha).fit(scale(z[sec == "S1"]), y[sec == "S1"])
        errs[alpha] = float(((fitted.predict(scale(z[sec == "S2"])) - y[sec == "S2"]) ** 2).mean())
    best = min(errs, key=lambda a: (errs[a], a))
    assert model.history[0]["alpha"] == pytest.approx(best)
    expected = Ridge(alpha=best).fit(scale(z[sec == "S1"]), y[sec == "S1"]).predict(scale(z[sec == "S3"]))
    pred = cp._core.lognorm(table[sec == "S3", genes].layers["ridge"].toarray().astype(float))
    np.testing.assert_allclose(pred, cp._core.lognorm(np.expm1(np.clip(expected, 0, None))), atol=1e-4)
    # without validation spots the penalty comes from exact leave-one-out, as RidgeCV's
    loo = cp.tl.fit(sdata, head="ridge", encoder="handcrafted", train=["S1"], **KW, **NO_CONTEXT)
    cv = RidgeCV(alphas=10.0 ** np.arange(-1, 5)).fit(scale(z[sec == "S1"]), y[sec == "S1"])
    assert loo.history[0]["alpha"] == pytest.approx(cv.alpha_)
    with pytest.raises(cp.CpnnError, match="closed form"):
        cp.tl.fit(sdata, head="ridge", encoder="resnet18", finetune=True, **KW)


def test_one_configuration_record(synthetic):
    sdata, _ = synthetic
    model = cp.tl.fit(sdata, train=["S1"], encoder="handcrafted", epochs=2, **KW)
    assert isinstance(model.config, FitConfig)
    fit = sdata["table"].uns["cpnn"]["fit"]
    for key, value in model.config.to_uns().items():
        assert key in fit
        if not isinstance(value, dict | list):
            assert fit[key] == value, key
    with pytest.raises(Exception, match="cannot assign"):
        model.config.lr = 1.0  # frozen


@pytest.mark.parametrize("head", ["cpnn", "direct"])
def test_model_files_of_format_version_1_still_load(head):
    """Files written by cpnn before the redesign (tests/data, generated with that release) load and predict."""
    sdata, profiles = synthetic_sdata(np.random.default_rng(11), n_side=6, n_genes=24, sections=("S1", "S2"))
    cp.pp.select_genes(sdata, n_top_genes=24)
    cp.pp.build_prototypes(sdata, profiles)
    model = cp.CPNN.load(DATA / f"model_v1_{head}.pt")
    assert model.config["head"] == head and model.config["preset"] in ("paper", "cpnn")
    cp.tl.predict(sdata, model, regions=["S2"])
    if head == "cpnn":
        then = np.load(DATA / "model_v1_cpnn_proportions.npy")
        np.testing.assert_allclose(sdata["table"].obsm["cpnn_proportions"].dropna().to_numpy(), then, rtol=1e-5)
