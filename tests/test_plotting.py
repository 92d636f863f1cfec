"""cp.pl on real HER2ST data: image comparisons against committed baselines, errors, no mutation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.testing.compare import compare_images
from scipy import sparse
from sklearn.neighbors import NearestNeighbors

import cpnn as cp
from cpnn._errors import CpnnError

from ._synthetic import synthetic_sdata

BASELINES = Path(__file__).parent / "baseline_images"
#: RMS tolerance of matplotlib.testing.compare (0-255 scale).
TOL = 8.0


@pytest.fixture(scope="module")
def plot_data(her2st_all, cid4465):
    """Two real sections with stereoscope proportions as the composition, mean prototypes, and a
    deterministic "prediction" (each spot's 6 nearest neighbours' mean counts)."""
    sdata = cp.datasets.her2st(["B4", "C3"])
    table = sdata["table"]
    table.obsm["cpnn_proportions"] = cp.datasets.her2st_proportions("major").reindex(table.obs_names)
    cp.pp.select_genes(table, n_top_genes=60)
    cp.pp.build_prototypes(table, cid4465, cell_type_key="celltype_major", method="mean")
    X = table.X.toarray()
    pred = np.zeros_like(X)
    for s in table.obs["section"].cat.categories:
        m = (table.obs["section"] == s).to_numpy()
        xy = table.obsm["spatial"][m]
        idx = NearestNeighbors(n_neighbors=7).fit(xy).kneighbors(xy, return_distance=False)[:, 1:]
        pred[m] = X[m][idx].mean(1)
    table.layers["smooth"] = sparse.csr_matrix(pred)
    table.layers["shuffled"] = sparse.csr_matrix(pred[np.random.default_rng(0).permutation(len(pred))])
    return sdata


def _check(fig, name: str, tmp_path: Path) -> None:
    actual = tmp_path / f"{name}.png"
    fig.savefig(actual, dpi=60)
    plt.close(fig)
    expected = BASELINES / f"{name}.png"
    if os.environ.get("CPNN_UPDATE_BASELINES"):
        BASELINES.mkdir(exist_ok=True)
        shutil.copy(actual, expected)
    assert expected.exists(), f"no baseline {expected}; run with CPNN_UPDATE_BASELINES=1 once and look at it"
    err = compare_images(str(expected), str(actual), tol=TOL)
    assert err is None, err


def _snapshot(table):
    return (
        sorted(table.obsm),
        sorted(table.obs.columns),
        sorted(table.layers),
        sorted(table.uns.get("cpnn", {})),
        table.X.sum(),
    )


def test_proportions_image(plot_data, tmp_path):
    table = plot_data["table"]
    before = _snapshot(table)
    fig = cp.pl.proportions(
        plot_data, cell_types=["Epithelial", "CAFs", "T-cells"], region="B4", max_px=500, return_fig=True
    )
    assert [a.get_title() for a in fig.axes if a.get_title()] == ["Epithelial", "CAFs", "T-cells"]
    assert fig._suptitle.get_text() == "Cell-type composition of B4, predicted from H&E"
    labels = [a.get_ylabel() for a in fig.axes if getattr(a, "_colorbar", None)]
    assert len(labels) == 3 and all(label.startswith("proportion (this panel: 0-") for label in labels)
    _check(fig, "proportions", tmp_path)
    assert _snapshot(table) == before


def test_proportions_spots_sit_on_the_tissue(plot_data):
    """The drawn spot centres fall inside the drawn image, on darker-than-background pixels."""
    fig = cp.pl.proportions(plot_data, cell_types="Epithelial", region="C3", max_px=500, return_fig=True)
    ax = fig.axes[0]
    img = np.asarray(ax.images[0].get_array(), float)
    circles = max(ax.collections, key=lambda c: len(c.get_paths()))
    centres = np.array([p.vertices.mean(0) for p in circles.get_paths()])  # (x, y) in image pixels
    assert len(centres) == int((plot_data["table"].obs["section"] == "C3").sum())
    h, w = img.shape[:2]
    assert ((centres[:, 0] >= 0) & (centres[:, 0] < w) & (centres[:, 1] >= 0) & (centres[:, 1] < h)).all()
    grey = img[..., :3].mean(-1)
    on_spots = grey[centres[:, 1].astype(int), centres[:, 0].astype(int)]
    background = np.percentile(grey, 95)  # the bright glass around the tissue
    assert np.median(on_spots) < background - 0.1 * (background - grey.min())
    plt.close(fig)


def test_prototypes_image(plot_data, tmp_path):
    fig = cp.pl.prototypes(plot_data, n_markers=3, return_fig=True)
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == len(plot_data["table"].uns["cpnn"]["cell_types"])
    _check(fig, "prototypes", tmp_path)


def test_correlations_image(plot_data, tmp_path):
    table = plot_data["table"]
    before = _snapshot(table)
    fig = cp.pl.correlations(plot_data, layers=["smooth", "shuffled"], return_fig=True)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["B4", "C3", "pooled"]
    _check(fig, "correlations", tmp_path)
    assert _snapshot(table) == before  # evaluated on the fly, nothing written
    # tables from cp.tl.evaluate, several methods at once
    res = {n: cp.tl.evaluate(table, layer=n) for n in ("smooth", "shuffled")}
    ax = plt.figure().add_subplot()
    assert cp.pl.correlations(res, kind="box", ax=ax) is ax
    plt.close("all")


def test_expression_titles_carry_spearman(plot_data, tmp_path):
    fig = cp.pl.expression(
        plot_data, ["ERBB2"], layer="smooth", region="C3", max_px=400, save=tmp_path / "e.png", return_fig=True
    )
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles[0] == "ERBB2 measured (C3)"
    assert titles[1].startswith("ERBB2 predicted from H&E\nSpearman 0.")
    # measured and predicted share one colour scale
    limits = [a.collections[0].get_clim() for a in fig.axes if a.get_title()]
    assert limits[0] == limits[1]
    assert (tmp_path / "e.png").stat().st_size > 1000
    plt.close(fig)


def test_plot_errors_list_valid_names(plot_data):
    with pytest.raises(CpnnError, match=r"unknown cell type.*valid cell types are: B-cells"):
        cp.pl.proportions(plot_data, cell_types=["Neurons"])
    with pytest.raises(CpnnError, match=r"region='Z1'.*valid regions"):
        cp.pl.proportions(plot_data, region="Z1")
    with pytest.raises(CpnnError, match=r"unknown gene.*valid genes are"):
        cp.pl.expression(plot_data, ["NOTAGENE"], layer="smooth")
    with pytest.raises(CpnnError, match=r"layers=\['nope'\]"):
        cp.pl.correlations(plot_data, layers="nope")
    with pytest.raises(CpnnError, match="unknown gene"):
        cp.pl.prototypes(plot_data, genes=["NOTAGENE"])


def test_expression_of_a_single_predicted_spot_says_a_correlation_needs_more(plot_data):
    """29.23: one predicted spot in the region: the error says why (a correlation), not only how many."""
    table = plot_data["table"]
    one = np.zeros(table.n_obs, bool)
    one[np.flatnonzero((table.obs["section"] == "C3").to_numpy())[0]] = True
    table.obs["smooth_predicted"] = one
    try:
        with pytest.raises(CpnnError, match=r"1 predicted spot\(s\); the per-gene Spearman correlation .* at least 3"):
            cp.pl.expression(plot_data, ["ERBB2"], layer="smooth", region="C3")
    finally:
        del table.obs["smooth_predicted"]


def test_proportions_without_image_and_to_obs(plot_data):
    table = plot_data["table"].copy()
    fig = cp.pl.proportions(table, cell_types=["CAFs"], region="B4", return_fig=True)
    assert not fig.axes[0].images  # no image behind, spots from obsm["spatial"]
    plt.close(fig)
    out = cp.pp.proportions_to_obs(table, copy=True)
    assert "CAFs" not in table.obs  # copy=True leaves the input alone
    np.testing.assert_allclose(out.obs["CAFs"], table.obsm["cpnn_proportions"]["CAFs"])
    assert list(out.uns["cpnn"]["obs_columns"]["CAFs"]) == ["cpnn_proportions", "CAFs"]
    cp.pp.proportions_to_obs(out)  # again: its own columns are refreshed
    out.obs["T-cells"] = 1.0
    out.uns["cpnn"]["obs_columns"].pop("T-cells")  # now a column of the user's with a cell type's name
    with pytest.raises(cp.CpnnError, match="prefix"):
        cp.pp.proportions_to_obs(out)
    cp.pp.proportions_to_obs(out, prefix="cpnn_")
    assert "cpnn_T-cells" in out.obs and (out.obs["T-cells"] == 1.0).all()


def test_legacy_anndata_is_spatialdata_ios_layout_and_squidpy_draws_it(plot_data):
    """cp.pl.legacy_anndata gives the layout of spatialdata-io's to_legacy_anndata (#38), which squidpy draws as is."""
    import warnings

    import squidpy as sq
    from matplotlib_scalebar.scalebar import ScaleBar
    from spatialdata_io.experimental import to_legacy_anndata

    view = cp.pl.legacy_anndata(plot_data, region="C3")
    with warnings.catch_warnings():  # spatialdata-io's own notes on the shapes it converts
        warnings.simplefilter("ignore")
        theirs = to_legacy_anndata(plot_data, coordinate_system="C3", table_name="table", include_images=True)
    theirs = theirs[view.obs_names]
    assert list(view.uns["spatial"]) == list(theirs.uns["spatial"]) == ["C3_image"]
    ours, ref = view.uns["spatial"]["C3_image"], theirs.uns["spatial"]["C3_image"]
    assert set(ours["scalefactors"]) == set(ref["scalefactors"])
    assert ours["scalefactors"]["tissue_hires_scalef"] == ref["scalefactors"]["tissue_hires_scalef"] == 1.0
    assert np.isclose(
        ours["scalefactors"]["spot_diameter_fullres"], ref["scalefactors"]["spot_diameter_fullres"], rtol=0.01
    )
    for res in ("hires", "lowres"):
        assert abs(ours["images"][res].shape[0] - ref["images"][res].shape[0]) <= 1
        assert abs(ours["images"][res].shape[1] - ref["images"][res].shape[1]) <= 1
        assert ours["images"][res].shape[2] == 3 and ours["images"][res].dtype == np.uint8
    hires = (ours["images"]["hires"].astype(float), ref["images"]["hires"].astype(float))
    h, w = min(hires[0].shape[0], hires[1].shape[0]), min(hires[0].shape[1], hires[1].shape[1])
    assert np.abs(hires[0][:h, :w] - hires[1][:h, :w]).mean() < 8  # the same picture, resampled differently
    np.testing.assert_allclose(view.obsm["spatial"], theirs.obsm["spatial"], atol=1.0)  # within a hires pixel
    # the whole table's rows come along, compositions included, and the input is left alone
    assert view.n_vars == plot_data["table"].n_vars and "cpnn_proportions" in view.obsm
    assert "spatial" not in plot_data["table"].uns
    um = view.uns["cpnn_um_per_px"]
    assert np.isclose(um * ours["scalefactors"]["spot_diameter_fullres"], 100.0, rtol=0.05)  # legacy ST: 100 um spots
    view.obs["CAFs"] = view.obsm["cpnn_proportions"]["CAFs"]
    sq.pl.spatial_scatter(view, color="CAFs", scalebar_dx=um)  # found: library, image, scale factors
    fig = plt.gcf()
    assert fig.axes[0].images and any(isinstance(a, ScaleBar) for a in fig.axes[0].artists)
    plt.close(fig)
    # cp.pl draws such an AnnData with its own image (also one from to_legacy_anndata or sc.read_visium)
    for draw in (cp.pl.proportions, cp.pl.dominant):
        fig = draw(view, return_fig=True, **({"cell_types": ["CAFs"]} if draw is cp.pl.proportions else {}))
        assert fig.axes[0].images, draw.__name__
        bars = [a for a in fig.axes[0].artists if isinstance(a, ScaleBar)]
        assert bars and np.isclose(bars[0].dx, um), draw.__name__
        plt.close(fig)
    # spatialdata-io's: the scale from the table's spot diameter (100 um) over its spot_diameter_fullres
    fig = cp.pl.proportions(theirs, cell_types=["CAFs"], return_fig=True)
    bars = [a for a in fig.axes[0].artists if isinstance(a, ScaleBar)]
    assert fig.axes[0].images and bars and np.isclose(bars[0].dx, um, rtol=0.02)
    plt.close(fig)
    with pytest.raises(cp.CpnnError, match="needs a SpatialData with the H&E"):
        cp.pl.legacy_anndata(plot_data["table"])
    with pytest.raises(cp.CpnnError, match="valid regions"):
        cp.pl.legacy_anndata(plot_data, region="Z9")


def test_maps_carry_squidpys_scale_bar(plot_data):
    """Every spatial map has matplotlib-scalebar's bar (squidpy's scalebar_dx), in micrometres; none hand-made."""
    from matplotlib_scalebar.scalebar import ScaleBar

    for fig in (
        cp.pl.proportions(plot_data, cell_types=["CAFs", "T-cells"], region="B4", max_px=400, return_fig=True),
        cp.pl.dominant(plot_data, region="B4", max_px=400, return_fig=True),
        cp.pl.expression(plot_data, ["ERBB2"], layer="smooth", region="B4", max_px=400, return_fig=True),
    ):
        bars = [a for ax in fig.axes for a in ax.artists if isinstance(a, ScaleBar)]
        assert bars and all(b.units == "um" for b in bars)
        assert all((b.fixed_value, b.fixed_units) in ((500, "um"), (1, "mm")) for b in bars)  # round, B4 is ~6 mm wide
        assert all(np.isclose(b.dx, bars[0].dx) for b in bars)
        plt.close(fig)


def test_history_from_model_and_table():
    sdata, _ = synthetic_sdata(np.random.default_rng(2), n_side=6, sections=("S1", "S2"))
    cp.pp.select_genes(sdata, n_top_genes=20)
    model = cp.tl.fit(
        sdata,
        head="direct",
        encoder="handcrafted",
        patch_size_um=32,
        patch_px=32,
        epochs=5,
        train=["S1"],
        validation=["S2"],
    )
    for source in (model, sdata):
        fig = cp.pl.history(source, return_fig=True)
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels[:2] == ["training loss (with regularisers)", "validation criterion (data term)"]
        plt.close(fig)


def test_history_records_and_draws_the_parts_of_the_loss():
    """#28: the composition loss and the prototype regulariser were summed into one number."""
    sdata, profiles = synthetic_sdata(np.random.default_rng(3), n_side=6, sections=("S1", "S2"))
    cp.pp.select_genes(sdata, n_top_genes=20)
    cp.pp.build_prototypes(sdata, profiles)
    model = cp.tl.fit(
        sdata, encoder="handcrafted", patch_size_um=32, patch_px=32, epochs=4, train=["S1"], validation=["S2"]
    )
    h = pd.DataFrame(model.history)
    parts = ["train_data", "train_residual", "train_sample_offset", "train_prototypes", "train_composition"]
    assert set(parts) <= set(h)
    np.testing.assert_allclose(h[parts].sum(1), h["train_loss"], rtol=1e-4)
    assert (
        (h["train_composition"] > 0).all() and (h["train_prototypes"] >= 0).all() and (h["train_residual"] == 0).all()
    )
    stored = sdata["table"].uns["cpnn"]["history"]
    np.testing.assert_allclose(stored["train_composition"], h["train_composition"])
    fig = cp.pl.history(sdata, return_fig=True)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "  part: composition" in labels and "  part: data" in labels and "  part: residual" not in labels
    plt.close(fig)
