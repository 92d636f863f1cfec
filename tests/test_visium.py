"""10x Visium end to end: Space Ranger folders written on the fly, read by spatialdata-io as it is."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cpnn as cp
from cpnn.data import region_images

from ._spaceranger import write_spaceranger

spatialdata_io = pytest.importorskip("spatialdata_io")  # a test dependency: cpnn[test] installs it

FIT = {"encoder": "handcrafted", "patch_px": 64, "epochs": 120, "lr": 3e-3, "seed": 0}


@pytest.fixture(scope="module")
def protos():
    rng = np.random.default_rng(11)
    p = rng.gamma(0.5, 1.0, size=(3, 50)) + 0.01
    return p / p.sum(1, keepdims=True)


def _profiles(protos, names):
    return pd.DataFrame(protos.T, index=names, columns=[f"t{k}" for k in range(protos.shape[0])])


def _recovery(table, truth, mask):
    props = table.obsm["cpnn_proportions"].loc[mask]
    t = truth.loc[props.index.str.replace(r"^[AB]_", "", regex=True)]
    return [np.corrcoef(props[c], t[c].to_numpy())[0, 1] for c in props.columns]


def test_full_resolution_tiff_v1_positions(tmp_path, protos):
    folder, truth = write_spaceranger(tmp_path / "sr", np.random.default_rng(0), protos, positions="v1")
    sdata = spatialdata_io.visium(folder, fullres_image_file="image.tif")
    table = sdata["table"]
    # the sharpest image covering the spots wins, through SpatialData's transformations; 55 um spots
    (reg,) = region_images(sdata, table, np.ones(table.n_obs, bool))
    assert reg.image_key == "sample1_full_image"
    assert reg.um_per_px == pytest.approx(1.0)
    cp.pp.select_genes(sdata, n_top_genes=40)
    cp.pp.build_prototypes(sdata, _profiles(protos, table.var_names))
    held = (table.obs["array_row"] >= 8).to_numpy()
    model = cp.tl.fit(sdata, train=~held, **FIT)
    cp.tl.predict(sdata, model, regions=held)
    assert min(_recovery(table, truth, held)) > 0.85
    metrics = cp.tl.evaluate(sdata, groupby="region")
    assert metrics["spearman_mean"].mean() > 0.3
    fig = cp.pl.proportions(sdata, max_px=300, return_fig=True)
    assert len([a for a in fig.axes if a.images]) == 3


def test_hires_png_only_ensembl_ids_v2_positions(tmp_path, protos):
    """No full-resolution image: the hires PNG (scale 0.5) is used; genes are Ensembl IDs with symbols."""
    folder, truth = write_spaceranger(
        tmp_path / "sr", np.random.default_rng(1), protos, positions="v2", full_image=False
    )
    sdata = spatialdata_io.visium(folder)
    table = sdata["table"]
    table.var["symbol"] = table.var_names.to_numpy()
    table.var_names = table.var["gene_ids"].to_numpy()
    (reg,) = region_images(sdata, table, np.ones(table.n_obs, bool))
    assert reg.image_key == "sample1_hires_image"
    assert reg.um_per_px == pytest.approx(2.0)
    symbols = [f"GENE{i}" for i in range(protos.shape[1])]
    cp.pp.select_genes(sdata, genes=symbols[:40], gene_symbols="symbol")
    assert table.var["cpnn_selected"].sum() == 40
    with pytest.raises(cp.CpnnError, match="gene_symbols=<var column>"):
        cp.pp.build_prototypes(sdata, _profiles(protos, symbols))
    cp.pp.build_prototypes(sdata, _profiles(protos, symbols), gene_symbols="symbol")
    held = (table.obs["array_row"] >= 8).to_numpy()
    model = cp.tl.fit(sdata, train=~held, **FIT)
    assert model.genes[0].startswith("ENSG")
    cp.tl.predict(sdata, model, regions=held)
    assert min(_recovery(table, truth, held)) > 0.8
    fig = cp.pl.expression(sdata, ["GENE3"], gene_symbols="symbol", max_px=200, return_fig=True)
    assert fig.axes[0].get_title().startswith("GENE3 measured")


def test_two_samples_in_one_object(tmp_path, protos):
    import spatialdata as sd

    rng = np.random.default_rng(2)
    a_dir, truth_a = write_spaceranger(tmp_path / "a", rng, protos, library_id="A", n_side=8)
    b_dir, truth_b = write_spaceranger(tmp_path / "b", rng, protos, library_id="B", n_side=8, positions="v2")
    a = spatialdata_io.visium(a_dir, fullres_image_file="image.tif")
    b = spatialdata_io.visium(b_dir, fullres_image_file="image.tif")
    for s, lib in ((a, "A"), (b, "B")):
        s["table"].obs_names = [f"{lib}_{o}" for o in s["table"].obs_names]  # barcodes repeat across slides
    sdata = sd.concatenate([a, b], concatenate_tables=True)
    table = sdata["table"]
    assert not sdata.attrs  # the reader tag is gone: the scale comes from Space Ranger's columns
    cp.pp.select_genes(sdata, n_top_genes=40)
    cp.pp.build_prototypes(sdata, _profiles(protos, table.var_names))
    model = cp.tl.fit(sdata, train=["A"], **FIT)
    cp.tl.predict(sdata, model, regions=["B"])
    held = (table.obs["region"] == "B").to_numpy()
    assert min(_recovery(table, pd.concat([truth_a, truth_b]), held)) > 0.85
