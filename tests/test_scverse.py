"""A good scverse citizen: objects that still save, figures shown once, progress you can see, fits side by side."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import spatialdata as sd
import torch

import cpnn as cp

from ._synthetic import synthetic_sdata

KW = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0, "epochs": 3}


@pytest.fixture(scope="module")
def world():
    s, profiles = synthetic_sdata(np.random.default_rng(31), n_side=6, sections=("S1", "S2"))
    profiles.columns = ["Cancer Epithelial", "T cells (CD8+)", "B cells/plasma"]  # names users have
    s["table"].obsm["truth"].columns = ["Cancer Epithelial", "T cells (CD8+)", "B cells-plasma"]
    return s, profiles


def _round_trip(sdata, tmp_path, step):
    path = tmp_path / f"{step}.zarr"
    sdata.write(path)
    back = sd.read_zarr(path)
    t, u = sdata["table"], back["table"]
    assert t.shape == u.shape and set(t.obsm) <= set(u.obsm) and set(t.layers) == set(u.layers), step
    return back


def test_the_object_writes_and_reads_back_after_every_function(world, tmp_path):
    sdata, profiles = world
    steps = [
        ("select_genes", lambda: cp.pp.select_genes(sdata, n_top_genes=30)),
        ("build_prototypes", lambda: cp.pp.build_prototypes(sdata, profiles)),
        ("deconvolve", lambda: cp.pp.deconvolve(sdata, method="nnls")),
        ("embed", lambda: cp.pp.embed(sdata, encoder="handcrafted", patch_size_um=32, patch_px=32)),
        ("fit", lambda: cp.tl.fit(sdata, train=["S1"], **KW)),
        ("evaluate", None),
        ("proportions_to_obs", lambda: cp.pp.proportions_to_obs(sdata)),
        ("tile", lambda: cp.pp.tile(sdata, mpp=1.0, tile_size_um=32)),
    ]
    model = None
    for step, call in steps:
        if step == "evaluate":
            cp.tl.predict(sdata, model)
            cp.tl.evaluate(sdata)
        else:
            out = call()
            model = out if isinstance(out, cp.CPNN) else model
        back = _round_trip(sdata, tmp_path, step)
    assert "B cells-plasma" in back["table"].obsm["cpnn_proportions"].columns  # '/' cannot be a zarr key
    obs = back["table"].obs
    assert "Cancer_Epithelial" in obs and "T_cells_CD8" in obs  # the nearest names spatialdata allows
    # every column names its composition and cell type after a write/read round trip
    assert list(back["table"].uns["cpnn"]["obs_columns"]["T_cells_CD8"]) == ["cpnn_proportions", "T cells (CD8+)"]
    # spatialdata-plot draws the composition column of the written object
    import spatialdata_plot  # noqa: F401

    ax = plt.figure().add_subplot()
    back.pl.render_shapes("S1_spots", color="Cancer_Epithelial", table_name="table").pl.show(ax=ax)
    assert ax.collections
    plt.close("all")


def test_figures_follow_scanpys_convention(world, tmp_path, monkeypatch):
    import scanpy as sc

    sdata, _ = world
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    assert cp.pl.proportions(sdata, region="S1", key="truth") is None and shown  # drawn once, nothing returned
    fig = cp.pl.proportions(sdata, region="S1", key="truth", return_fig=True)
    assert isinstance(fig, plt.Figure)
    axes = cp.pl.proportions(sdata, region="S1", key="truth", show=False)
    assert isinstance(axes, list) and all(isinstance(a, plt.Axes) for a in axes)
    before = sc.settings.figdir
    sc.settings.figdir = tmp_path
    try:
        cp.pl.proportions(sdata, region="S1", key="truth", show=False, save="_S1.png")
    finally:
        sc.settings.figdir = before
    assert (tmp_path / "proportions_S1.png").stat().st_size > 1000
    cp.pl.proportions(sdata, region="S1", key="truth", show=False, save=tmp_path / "explicit.pdf")
    assert (tmp_path / "explicit.pdf").exists()
    plt.close("all")


def test_progress_is_shown_by_default(world, capsys):
    sdata, profiles = world
    cp.pp.select_genes(sdata, n_top_genes=30)
    cp.pp.build_prototypes(sdata, profiles)
    cp.settings.progress_bar = True
    try:
        cp.tl.fit(sdata, train=["S1"], validation=["S2"], **KW)
    finally:
        cp.settings.progress_bar = False
    err = capsys.readouterr().err
    assert "fit cpnn" in err and "val_spearman" in err  # epoch bar with loss and validation Spearman
    cp.tl.fit(sdata, train=["S1"], **KW)
    assert "fit cpnn" not in capsys.readouterr().err


def test_several_fits_coexist(world):
    sdata, profiles = world
    cp.pp.select_genes(sdata, n_top_genes=30)
    cp.pp.build_prototypes(sdata, profiles)
    cp.tl.fit(sdata, train=["S1"], validation=["S2"], key_added="cpnn", **KW)
    cp.tl.fit(sdata, train=["S1"], validation=["S2"], head="direct", key_added="direct", **KW)
    fits = sdata["table"].uns["cpnn"]["fits"]
    assert fits["cpnn"]["head"] == "cpnn" and fits["direct"]["head"] == "direct"
    assert len(fits["cpnn"]["history"]["val_spearman"]) == 3
    assert sdata["table"].uns["cpnn"]["fit"]["head"] == "direct"  # the latest
    fig = cp.pl.history(sdata, key="cpnn", return_fig=True)
    assert fig.axes[0].lines
    plt.close(fig)


def test_same_seed_is_bit_identical_in_deterministic_mode(world):
    sdata, profiles = world
    cp.pp.select_genes(sdata, n_top_genes=30)
    cp.pp.build_prototypes(sdata, profiles)
    cp.settings.deterministic = True
    try:
        assert torch.are_deterministic_algorithms_enabled()
        a = cp.tl.fit(sdata, train=["S1"], validation=["S2"], **KW)
        b = cp.tl.fit(sdata, train=["S1"], validation=["S2"], **KW)
    finally:
        cp.settings.deterministic = False
    assert a.history == b.history
    for (k, v), (_, w) in zip(a.head.state_dict().items(), b.head.state_dict().items(), strict=True):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)
    info = sdata["table"].uns["cpnn"]["fit"]
    assert info["deterministic"] and info["threads"] >= 1 and info["torch"] == str(torch.__version__)


def test_public_signatures_name_their_types():
    """Every public function of pp, tl, pl, io and datasets annotates each parameter and its result,
    and none takes or returns a bare ``Any`` where a table goes (#38; mypy checks a typed session in CI)."""
    import inspect

    loose = []
    for sub in ("pp", "tl", "pl", "io", "datasets"):
        module = getattr(cp, sub)
        for name in module.__all__:
            func = getattr(module, name)
            if not inspect.isfunction(func):
                continue
            sig = inspect.signature(func)
            for p in sig.parameters.values():
                if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    continue
                if p.annotation is inspect.Parameter.empty or p.annotation == "Any":
                    loose.append(f"{sub}.{name}({p.name})")
                elif p.name in ("data", "sdata", "adata") and "Any" in str(p.annotation):
                    loose.append(f"{sub}.{name}({p.name}: {p.annotation})")
            if sig.return_annotation is inspect.Signature.empty or "Any" in str(sig.return_annotation):
                loose.append(f"{sub}.{name} -> {sig.return_annotation}")
    assert not loose, loose
