"""Slide level: tissue tiling, bags of tiles with bulk counts, per-tile composition maps."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

import cpnn as cp
from cpnn._errors import CpnnError

from ._synthetic import synthetic_slides

FIT = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "lr": 3e-3, "seed": 0}


def _disc_image(size: int, radius: float, chunk: int = 1000):
    """A lazily generated RGB image: an H&E-coloured disc of tissue on white glass."""
    import dask.array as da

    def block(block_info=None):
        (c0, c1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        dy2 = ((np.arange(y0, y1, dtype=np.float32) - size / 2) ** 2)[:, None]
        dx2 = ((np.arange(x0, x1, dtype=np.float32) - size / 2) ** 2)[None, :]
        inside = (dy2 + dx2) < radius**2
        out = np.full((c1 - c0, y1 - y0, x1 - x0), 245, np.uint8)
        for c, value in enumerate(np.array([190, 110, 170], np.uint8)[c0:c1]):
            out[c][inside] = value
        out[:, ::3, ::2] -= 6  # a little texture
        return out

    return da.map_blocks(block, dtype=np.uint8, chunks=((3,), (chunk,) * (size // chunk), (chunk,) * (size // chunk)))


def test_tile_large_image_only_on_tissue_without_loading_it():
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    size, radius, mpp = 12_000, 4_000.0, 0.5  # 432 MB as uint8, 1.7 GB as floats
    img = Image2DModel.parse(_disc_image(size, radius), dims=("c", "y", "x"))
    sdata = sd.SpatialData(images={"wsi": img})
    tracemalloc.start()
    cp.pp.tile(sdata, mpp=mpp, tile_size_um=112, min_tissue=0.5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100e6, f"tiling held {peak / 1e6:.0f} MB"
    table = sdata.tables["cpnn_tiles"]
    tile_px = 112 / mpp
    centres = table.obsm["spatial"]
    dist = np.hypot(centres[:, 0] - size / 2, centres[:, 1] - size / 2)
    assert (dist < radius + tile_px).all()  # no tile on glass
    grid = (np.arange(size // tile_px) + 0.5) * tile_px
    gx, gy = np.meshgrid(grid, grid)
    expected = int((np.hypot(gx - size / 2, gy - size / 2) < radius).sum())
    assert abs(table.n_obs - expected) <= 0.03 * expected, (table.n_obs, expected)
    assert (table.obs["tissue_fraction"] >= 0.5).all()
    shapes = sdata.shapes["cpnn_tiles_wsi"]
    assert len(shapes) == table.n_obs
    np.testing.assert_allclose(shapes.geometry.area, tile_px**2)
    assert table.n_vars == 0 and table.uns["cpnn_spatial"]["um_per_px"]["cpnn_tiles_wsi"] == mpp


def test_tile_errors():
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    img = Image2DModel.parse(np.full((3, 64, 64), 245, np.uint8), dims=("c", "y", "x"))
    sdata = sd.SpatialData(images={"glass": img})
    with pytest.raises(CpnnError, match="mpp="):
        cp.pp.tile(sdata)
    with pytest.raises(CpnnError, match="No tissue tile"):
        cp.pp.tile(sdata, mpp=1.0, tile_size_um=16)
    with pytest.raises(CpnnError, match="image_key"):
        cp.pp.tile(sdata, image_key="he", mpp=1.0)
    with pytest.raises(CpnnError, match="min_tissue"):
        cp.pp.tile(sdata, mpp=1.0, min_tissue=2)
    assert "cpnn_tiles" not in sdata.tables and not len(sdata.shapes)


@pytest.fixture(scope="module")
def slides_data():
    bulk, slides, profiles, tile_truth = synthetic_slides(np.random.default_rng(0), n_slides=48)
    for s in slides.values():
        cp.pp.tile(s, mpp=1.0, tile_size_um=32)
    cp.pp.select_genes(bulk, n_top_genes=60)
    cp.pp.build_prototypes(bulk, profiles)
    return bulk, slides, tile_truth


def test_slide_level_fit_recovers_planted_compositions(slides_data, tmp_path):
    bulk, slides, tile_truth = slides_data
    assert all(s.tables["cpnn_tiles"].n_obs == 36 for s in slides.values())  # 6 x 6 tissue tiles each
    idx = np.arange(bulk.n_obs)
    train, val, test = idx < 32, (idx >= 32) & (idx < 38), idx >= 38
    model = cp.tl.fit(bulk, slides=slides, train=train, validation=val, epochs=120, max_patches=24, **FIT)
    assert model.level == "slide" and bulk.uns["cpnn"]["fit"]["level"] == "slide"
    before = bulk.X.copy()
    cp.tl.predict(bulk, model, slides=slides, regions=test)
    assert (bulk.X != before).nnz == 0
    props = bulk.obsm["cpnn_proportions"]
    assert props.loc[~test].isna().all().all()
    truth = bulk.obsm["truth"]
    r = [np.corrcoef(props.loc[test, t], truth.loc[test, t])[0, 1] for t in truth.columns]
    assert min(r) > 0.95, r
    # per-tile maps, learnt from slide-level counts only
    tiles = pd.concat([slides[n].tables["cpnn_tiles"].obsm["cpnn_proportions"] for n in bulk.obs_names[test]])
    np.testing.assert_allclose(tiles.sum(1), 1.0, rtol=1e-5)
    rt = [np.corrcoef(tiles[t], tile_truth.loc[tiles.index, t])[0, 1] for t in truth.columns]
    assert min(rt) > 0.8, rt
    # predicted bulk expression follows the planted mean profile
    pred = bulk.layers["cpnn"][np.flatnonzero(test)].toarray()
    mu = truth.loc[test].to_numpy() @ bulk.varm["cpnn_prototypes"].T
    rg = [np.corrcoef(pred[:, j], mu[:, j])[0, 1] for j in range(mu.shape[1])]
    assert np.nanmean(rg) > 0.8
    # save / load keeps the slide level
    model.save(tmp_path / "slide.pt")
    again = cp.CPNN.load(tmp_path / "slide.pt")
    assert again.level == "slide"
    cp.tl.predict(bulk, again, slides=slides, regions=test, key_added="again")
    np.testing.assert_allclose(bulk.obsm["again_proportions"].loc[test], props.loc[test], atol=1e-6)


def test_slide_level_one_spatialdata_equals_dict(slides_data):
    """All slides in one SpatialData (tiles named by obs['slide']) give the same model as a dict."""
    import spatialdata as sd

    bulk, slides, _ = slides_data
    names = list(bulk.obs_names[:12])
    sub = bulk[names].copy()
    one = sd.concatenate([sd.SpatialData(images=dict(slides[n].images)) for n in names])
    cp.pp.tile(one, mpp=1.0, tile_size_um=32)
    tiles = one.tables["cpnn_tiles"]
    tiles.obs["slide"] = tiles.obs["image"].astype(str).str.removesuffix("_image")
    train = np.arange(12) < 9
    kw = {"train": train, "epochs": 5, "max_patches": 16, **FIT}
    a = cp.tl.fit(sub, slides=one, **kw)
    b = cp.tl.fit(sub, slides={n: slides[n] for n in names}, **kw)
    cp.tl.predict(sub, a, slides=one, key_added="one")
    cp.tl.predict(sub, b, slides={n: slides[n] for n in names}, key_added="dict")
    np.testing.assert_allclose(sub.layers["one"].toarray(), sub.layers["dict"].toarray(), rtol=1e-5)
    assert tiles.obsm["one_proportions"].notna().all().all()
    # without slides= a slide-level model maps any table's tiles one by one (tutorial 02's tile map)
    cp.tl.predict(one, a, table_key="cpnn_tiles", key_added="tile_map")
    np.testing.assert_allclose(tiles.obsm["tile_map_proportions"], tiles.obsm["one_proportions"], rtol=1e-5)
    assert list(tiles.obsm["tile_map_expression"].columns) == a.genes


def test_slide_level_direct_head_and_errors(slides_data):
    bulk, slides, _ = slides_data
    idx = np.arange(bulk.n_obs)
    model = cp.tl.fit(bulk, slides=slides, train=idx < 32, head="direct", epochs=10, **FIT)
    cp.tl.predict(bulk, model, slides=slides, key_added="direct")
    assert np.isfinite(bulk.layers["direct"].toarray()).all() and "direct_proportions" not in bulk.obsm
    with pytest.raises(CpnnError, match="no entry"):
        cp.tl.fit(bulk, slides={"slide0": slides["slide0"]}, **FIT)
    with pytest.raises(CpnnError, match="finetune"):
        cp.tl.fit(bulk, slides=slides, finetune=True, encoder="resnet18")
    with pytest.raises(CpnnError, match="slides="):
        cp.tl.fit(bulk, level="slide", **FIT)
    one = next(iter(slides.values()))
    with pytest.raises(CpnnError, match="obs\\['slide'\\]"):
        cp.tl.fit(bulk, slides=one, **FIT)
    with pytest.raises(CpnnError, match=r"cp\.pp\.tile"):
        cp.tl.fit(bulk, slides=slides, tiles_key="tiles", **FIT)
    with pytest.raises(CpnnError, match="max_patches"):
        cp.tl.fit(bulk, slides=slides, max_patches=0, **FIT)


def test_spot_model_predicts_every_tile_of_her2st(her2st_all, cid4465, tmp_path):
    """A spot-level model maps composition and expression over every tissue tile of B4."""
    import spatialdata as sd

    table = her2st_all["table"]
    b4 = table[table.obs["section"] == "B4"].copy()
    b4.uns["spatialdata_attrs"]["region"] = ["B4_spots"]
    sdata = sd.SpatialData(
        images={"B4_image": her2st_all.images["B4_image"]},
        shapes={"B4_spots": her2st_all.shapes["B4_spots"]},
        tables={"table": b4},
    )
    cp.pp.select_genes(sdata, n_top_genes=100)
    cp.pp.build_prototypes(sdata, cid4465, cell_type_key="celltype_major", method="mean")
    cp.pp.embed(sdata, encoder="handcrafted")
    model = cp.tl.fit(sdata, encoder="handcrafted", epochs=20, seed=0)
    cp.tl.predict(sdata, model)
    cp.pp.tile(sdata)
    tiles = sdata.tables["cpnn_tiles"]
    assert 700 < tiles.n_obs < 1000  # about 3 tiles per 200 um spot pitch cell, on tissue only
    cp.tl.predict(sdata, model, table_key="cpnn_tiles")
    props = tiles.obsm["cpnn_proportions"]
    expr = tiles.obsm["cpnn_expression"]
    assert props.notna().all().all() and list(expr.columns) == model.genes
    np.testing.assert_allclose(props.sum(1), 1.0, rtol=1e-5)
    with pytest.warns(FutureWarning, match=r"regions='cpnn_tiles' \(a tiles table\)\) is now table_key='cpnn_tiles'"):
        cp.tl.predict(sdata, model, regions="cpnn_tiles", key_added="old")  # the 0.2 spelling, one release more
    np.testing.assert_allclose(tiles.obsm["old_proportions"].to_numpy(), props.to_numpy())
    # the tile holding a spot's centre predicts about what the spot predicts
    spot_xy = np.asarray(b4.obsm["spatial"])
    d = np.hypot(*(tiles.obsm["spatial"][None, :, :] - spot_xy[:, None, :]).transpose(2, 0, 1))
    nearest = d.argmin(1)
    spots = b4.obsm["cpnn_proportions"].to_numpy()
    r = [np.corrcoef(spots[:, k], props.to_numpy()[nearest, k])[0, 1] for k in range(spots.shape[1])]
    assert np.nanmean(r) > 0.6, r
    fig = cp.pl.proportions(
        sdata,
        table_key="cpnn_tiles",
        cell_types=["Cancer Epithelial", "CAFs"],
        save=tmp_path / "tiles.png",
        return_fig=True,
        min_share=0,
    )
    assert len(fig.axes) >= 2 and (tmp_path / "tiles.png").stat().st_size > 10_000


def test_blank_glass_with_noise_is_not_tissue():
    """29.2: grey glass (243 +- 2 per channel) used to be called tissue in 255 of 256 tiles."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(243, 2, size=(3, 512, 512)), 0, 255).astype(np.uint8)
    sdata = sd.SpatialData(images={"glass": Image2DModel.parse(glass, dims=("c", "y", "x"))})
    with pytest.raises(CpnnError, match="No tissue tile"):
        cp.pp.tile(sdata, mpp=1.0, tile_size_um=32)
    # the same glass with a pale stained section on half of it: only that half is tissue
    pale = glass.copy()
    pale[:, :, :256] = np.clip(rng.normal([[[225]], [[190]], [[215]]], 3, size=(3, 512, 256)), 0, 255)
    sdata = sd.SpatialData(images={"half": Image2DModel.parse(pale, dims=("c", "y", "x"))})
    cp.pp.tile(sdata, mpp=1.0, tile_size_um=32)
    x = sdata.tables["cpnn_tiles"].obsm["spatial"][:, 0]
    assert len(x) >= 100 and (x < 256 + 32).all()


def test_a_slide_file_without_pixel_size_gets_advice_that_works(slides_data, tmp_path):
    """29.14: fit(slides={name: file}) on a file without pixel size said 'pass mpp=', which fit has not."""
    from ._wsi import disc_source, write_pyramid

    bulk, slides, _ = slides_data
    path = write_pyramid(tmp_path / "bare.tif", disc_source(512, 200), (512, 512), levels=2, tile=128)
    files = {**slides, str(bulk.obs_names[0]): path}
    with pytest.raises(CpnnError, match=r"records no pixel size.*cp\.io\.read_wsi\(.*mpp=0\.25\); cp\.pp\.tile"):
        cp.tl.fit(bulk, slides=files, **FIT)
    sdata = cp.io.read_wsi(path, mpp=1.0)  # the advice, followed
    cp.pp.tile(sdata, tile_size_um=32, key_added="cpnn_tiles")
    model = cp.tl.fit(bulk, slides={**slides, str(bulk.obs_names[0]): sdata}, epochs=2, **FIT)
    assert model.level == "slide"
