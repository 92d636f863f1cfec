"""The training path's seams: head and encoder registries, the ridge head, one configuration record, old files."""

from __future__ import annotations

import sys
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


def test_a_head_knob_is_one_field_of_the_heads_own_record(synthetic, tmp_path):
    """#40: a head's option is declared once, in its own Options record (the head's file); fit routes it."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class GainOptions(cp.models.HeadOptions):
        gain: float = cp.models.option(1.0, "Multiply the predicted log expression by this.", low=0.0)

    class Scaled(cp.models.DirectHead):
        Options = GainOptions

        @classmethod
        def from_config(cls, config, in_dim, prototypes):
            head = cls(in_dim, len(config["genes"]), hidden=(8,))
            head.gain = config["gain"]
            return head

        def forward(self, z):
            return self.outputs(self.gain * self.mlp(self.standardise(z)).float())

    cp.models.register_head("toy_gain")(Scaled)
    sdata, _ = synthetic
    kw = {"encoder": "handcrafted", "train": ["S1"], "encoder_kwargs": {"patch_size_um": 32, "patch_px": 32}}
    try:
        model = cp.tl.fit(sdata, head="toy_gain", head_kwargs={"gain": 0.0}, train_kwargs={"epochs": 2}, **kw)
        assert model.config.head_options == GainOptions(gain=0.0) and model.head.gain == 0.0
        cp.tl.predict(sdata, model, regions=["S3"], key_added="gain0")
        layer = sdata["table"][sdata["table"].obs["section"] == "S3"].layers["gain0"].toarray()
        assert np.allclose(layer[:, layer.sum(0) > 0], layer[0, layer.sum(0) > 0])  # gain 0: every spot alike
        model.save(tmp_path / "gain.pt")
        assert cp.CPNN.load(tmp_path / "gain.pt").head.gain == 0.0
        with pytest.warns(FutureWarning, match=r"pass head_kwargs=\{'gain': 0.5\}"):
            flat = cp.tl.fit(sdata, head="toy_gain", gain=0.5, train_kwargs={"epochs": 1}, **kw)
        assert flat.config["gain"] == 0.5
        with pytest.raises(cp.CpnnError, match=r"gain=-1.0 must be"):
            cp.tl.fit(sdata, head="toy_gain", head_kwargs={"gain": -1.0}, **kw)
    finally:
        cp.models.HEADS.remove("toy_gain")


def test_an_input_kind_plugs_in_from_outside_in_one_file(synthetic, tmp_path):
    """#40: a new input kind is one class in one file, registered with cp.tl.register_input_kind.

    The kind (tests/plugins/memmap_kind.py) reads each spot's embedding from a memory-mapped
    ``.npy`` file (embeddings another pipeline computed) instead of ``obsm``, using only cpnn's
    public names; fit and predict through it must equal the built-in spots kind's.
    """
    import ast

    source = Path(__file__).parent / "plugins" / "memmap_kind.py"
    private = [
        n.module for n in ast.walk(ast.parse(source.read_text()))
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("cpnn") and "._" in n.module
    ]  # fmt: skip
    assert not private and "cp._" not in source.read_text()
    sys.path.insert(0, str(source.parent))
    try:
        import memmap_kind
    finally:
        sys.path.remove(str(source.parent))
    sdata, _ = synthetic
    table = sdata["table"]
    cp.pp.embed(sdata, encoder="handcrafted", **KW)
    np.save(tmp_path / "z.npy", np.asarray(table.obsm["cpnn_embedding"], dtype=np.float32))
    data = memmap_kind.MemmapSpots(sdata, tmp_path / "z.npy")
    kw = {
        "encoder": "handcrafted", "train": ["S1"], "validation": ["S2"], "train_kwargs": {"epochs": 5},
        "data_kwargs": {"context_um": 0}, "encoder_kwargs": {"patch_size_um": 32, "patch_px": 32},
    }  # fmt: skip
    try:
        assert cp.tl.kind_for(data, level="spot").name == "memmap"
        toy = cp.tl.fit(data, key_added="toy_in", **kw)
        cp.tl.predict(data, toy, regions=["S3"], key_added="through_kind")
        built_in = cp.tl.fit(sdata, key_added="built_in", **kw)
        cp.tl.predict(sdata, built_in, regions=["S3"], key_added="built_in")
    finally:
        cp.tl.INPUT_KINDS.remove("memmap")
    assert toy.history == built_in.history  # the same rows, the same numbers, through the new kind
    np.testing.assert_array_equal(table.layers["through_kind"].toarray(), table.layers["built_in"].toarray())
    assert table.uns["cpnn"]["fits"]["toy_in"]["n_train"] == int((table.obs["section"] == "S1").sum())
    with pytest.raises(cp.CpnnError, match="No input kind reads a MemmapSpots"):
        cp.tl.fit(data, **kw)  # unregistered again


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
