"""The data users hold: whole-slide files, HEST-1k folders, Visium HD bins, Visium, any ST with its own H&E.

Every file is written by the test (pyramidal TIFFs with tifffile, a HEST-layout folder from the real
HER2ST sections, a Visium folder), so nothing is downloaded.
"""

from __future__ import annotations

import json
import tracemalloc
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import cpnn as cp
from cpnn._errors import CpnnError

from ._synthetic import synthetic_sdata, synthetic_slides
from ._wsi import disc_source, write_pyramid

FIT = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "lr": 3e-3, "seed": 0}


# --- whole-slide files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    return (rng.random((600, 900, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize(("kind", "suffix"), [("svs", ".svs"), ("generic", ".tif")])
def test_slide_files_read_lazily_with_their_pixel_size(tmp_path, rgb, kind, suffix):
    path = write_pyramid(tmp_path / f"slide{suffix}", rgb, mpp=0.2525, kind=kind, compression="zlib", tile=128)
    sdata = cp.io.read_wsi(path)
    assert sdata.attrs["cpnn"]["um_per_px"]["slide"] == 0.2525  # exactly what the file records
    tree = sdata.images["slide"]
    shapes = [tree[k]["image"].shape for k in tree.children]
    assert shapes == [(3, 600, 900), (3, 300, 450), (3, 150, 225)]
    level0 = tree["scale0"]["image"].data
    assert type(level0).__name__ == "Array"  # dask: nothing read yet
    np.testing.assert_array_equal(np.asarray(level0[:, 100:260, 300:700]), rgb[100:260, 300:700].transpose(2, 0, 1))
    # OpenSlide reads the same pixels
    other = cp.io.read_wsi(path, backend="openslide").images["slide"]["scale0"]["image"].data
    np.testing.assert_array_equal(np.asarray(other[:, 50:300, 10:500]), np.asarray(level0[:, 50:300, 10:500]))


def test_a_slide_file_without_pixel_size_needs_mpp(tmp_path, rgb, cpnn_log):
    path = write_pyramid(tmp_path / "bare.tif", rgb, compression="zlib", tile=128)
    with pytest.raises(CpnnError, match=r"records no pixel size; pass mpp="):
        cp.io.read_wsi(path)
    assert cp.io.read_wsi(path, mpp=0.5).attrs["cpnn"]["um_per_px"]["bare"] == 0.5
    tagged = write_pyramid(tmp_path / "tagged.tif", rgb, mpp=0.25, compression="zlib", tile=128)
    assert cp.io.read_wsi(tagged, mpp=0.5).attrs["cpnn"]["um_per_px"]["tagged"] == 0.5
    assert "records 0.25 um per pixel; using mpp=0.5" in cpnn_log()
    with pytest.raises(CpnnError, match="does not exist"):
        cp.io.read_wsi(tmp_path / "nope.svs")
    with pytest.raises(CpnnError, match="mpp=-1 must be a positive"):
        cp.io.read_wsi(path, mpp=-1)
    with pytest.raises(CpnnError, match="backend="):
        cp.io.read_wsi(path, backend="pillow")


def test_a_large_slide_file_is_tiled_and_embedded_without_loading_level_0(tmp_path):
    size, radius, mpp = 12_000, 4_000.0, 0.5  # level 0: 432 MB as uint8
    path = write_pyramid(tmp_path / "big.tif", disc_source(size, radius), (size, size), mpp=mpp, levels=4)
    tracemalloc.start()
    sdata = cp.io.read_wsi(path)
    cp.pp.tile(sdata, tile_size_um=112, min_tissue=0.5)
    _, peak_tile = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    cp.pp.embed(sdata, encoder="handcrafted", table_key="cpnn_tiles", patch_size_um=112, patch_px=32, num_workers=0)
    _, peak_embed = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak_tile < 100e6, f"tiling held {peak_tile / 1e6:.0f} MB"
    assert peak_embed < 100e6, f"embedding held {peak_embed / 1e6:.0f} MB"
    table = sdata.tables["cpnn_tiles"]
    tile_px = 112 / mpp
    dist = np.hypot(*(table.obsm["spatial"] - size / 2).T)
    assert (dist < radius + tile_px).all() and table.n_obs > 900
    z = table.obsm["cpnn_embedding"]
    assert np.isfinite(z).all() and z.shape[0] == table.n_obs


@pytest.fixture(scope="module")
def slide_files(tmp_path_factory):
    """The synthetic slides in memory, and the same slides written as pyramidal TIFFs at 1 um/px."""
    bulk, slides, profiles, _ = synthetic_slides(np.random.default_rng(0), n_slides=10)
    cp.pp.select_genes(bulk, n_top_genes=60)
    cp.pp.build_prototypes(bulk, profiles)
    folder = tmp_path_factory.mktemp("slides")
    files = {}
    for name, s in slides.items():
        img = np.asarray(s.images[f"{name}_image"].data).transpose(1, 2, 0)
        files[name] = write_pyramid(folder / f"{name}_image.tif", img, mpp=1.0, tile=64, levels=2, compression="zlib")
        cp.pp.tile(s, mpp=1.0, tile_size_um=32)
    return bulk, slides, files


def test_slide_level_from_files_equals_slide_level_from_spatialdata(slide_files):
    bulk, slides, files = slide_files
    idx = np.arange(bulk.n_obs)
    train, val, test = idx < 6, (idx >= 6) & (idx < 8), idx >= 8
    kw = {"train": train, "validation": val, "epochs": 5, "max_patches": 24, **FIT}
    from_sdata = cp.tl.fit(bulk, slides=slides, **kw)
    from_files = cp.tl.fit(bulk, slides={n: str(p) for n, p in files.items()}, **kw)
    assert from_files.history == from_sdata.history
    cp.tl.predict(bulk, from_sdata, slides=slides, regions=test, key_added="mem")
    cp.tl.predict(bulk, from_files, slides=files, regions=test, key_added="files")
    np.testing.assert_allclose(
        bulk.obsm["files_proportions"].loc[test], bulk.obsm["mem_proportions"].loc[test], atol=1e-6
    )
    with pytest.raises(CpnnError, match="does not exist"):
        cp.tl.predict(bulk, from_files, slides={**files, "slide8": "missing.svs"}, regions=test)


# --- any ST with its own H&E, and HEST-1k ----------------------------------------------------------


def test_from_arrays_gives_the_loader_s_embeddings(her2st_all):
    """The HER2ST B4 image, spot pixels and counts through from_arrays embed exactly as the loader's SpatialData."""
    t = her2st_all["table"]
    b4 = t[t.obs["section"] == "B4"].copy()
    img = np.asarray(her2st_all.images["B4_image"]["scale0"]["image"].data).transpose(1, 2, 0)
    counts = ad.AnnData(b4.X.copy(), obs=pd.DataFrame(index=b4.obs_names), var=pd.DataFrame(index=b4.var_names))
    mpp = t.uns["cpnn_spatial"]["um_per_px"]["B4_spots"]
    sdata = cp.io.from_arrays(img, b4.obsm["spatial"], counts, spot_diameter_um=100.0, mpp=mpp, sample="B4")
    assert list(sdata.images) == ["B4_image"] and list(sdata.shapes) == ["B4_spots"]
    assert "region" not in counts.obs  # the user's AnnData is untouched
    kw = {"encoder": "handcrafted", "patch_px": 64, "key_added": "z_arrays"}
    cp.pp.embed(sdata, **kw)
    b4_rows = (t.obs["section"] == "B4").to_numpy()
    cp.pp.embed(her2st_all, spots=b4_rows, **kw)
    mine = sdata["table"].obsm["z_arrays"]
    theirs = t.obsm["z_arrays"][b4_rows]
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)


def test_from_arrays_says_what_is_wrong():
    rng = np.random.default_rng(1)
    img = np.full((200, 300, 3), 240, np.uint8)
    counts = ad.AnnData(sparse.csr_matrix(rng.poisson(3, (5, 4)).astype(np.float32)))
    xy = np.c_[np.linspace(20, 280, 5), np.linspace(20, 60, 5)]
    with pytest.raises(CpnnError, match=r"Swapped, every spot falls inside"):
        cp.io.from_arrays(img, xy[:, ::-1], counts, spot_diameter_um=55, mpp=1.0)
    with pytest.raises(CpnnError, match="has 4 rows but counts has 5 spots"):
        cp.io.from_arrays(img, xy[:4], counts, spot_diameter_um=55, mpp=1.0)
    with pytest.raises(CpnnError, match="pixel size of sample 'sample' is unknown: pass mpp="):
        cp.io.from_arrays(img, xy, counts, spot_diameter_um=55)
    with pytest.raises(CpnnError, match=r"spot size .* pass spot_diameter_um="):
        cp.io.from_arrays(img, xy, counts, mpp=1.0)
    sdata = cp.io.from_arrays(img, xy, counts, spot_diameter_um=55, spot_diameter_px=110)
    assert sdata["table"].uns["cpnn_spatial"]["um_per_px"]["sample_spots"] == 0.5
    np.testing.assert_allclose(sdata.shapes["sample_spots"]["radius"], 55.0)


def _hest_folder(root, sdata, sections):
    """A HEST-layout folder from HER2ST sections: pyramidal JPEG TIFF, h5ad in level-0 pixels, metadata json."""
    t = sdata["table"]
    for s in sections:
        (root / "st").mkdir(parents=True, exist_ok=True)
        (root / "wsis").mkdir(exist_ok=True)
        (root / "metadata").mkdir(exist_ok=True)
        rows = (t.obs["section"] == s).to_numpy()
        a = ad.AnnData(t.X[rows].copy(), obs=pd.DataFrame(index=t.obs_names[rows]), var=pd.DataFrame(index=t.var_names))
        a.obsm["spatial"] = t.obsm["spatial"][rows]
        a.obs["pxl_col_in_fullres"], a.obs["pxl_row_in_fullres"] = a.obsm["spatial"].T
        a.write_h5ad(root / "st" / f"{s}.h5ad")
        img = np.asarray(sdata.images[f"{s}_image"]["scale0"]["image"].data).transpose(1, 2, 0)
        write_pyramid(root / "wsis" / f"{s}.tif", img, levels=3, tile=512)  # HEST's TIFFs: JPEG, no pixel size
        mpp = t.uns["cpnn_spatial"]["um_per_px"][f"{s}_spots"]
        meta = {
            "dataset_title": "HER2ST", "id": s, "organ": "Breast", "species": "Homo sapiens",
            "st_technology": "Spatial Transcriptomics", "oncotree_code": "IDC", "patient": s[0],
            "pixel_size_um_embedded": None, "pixel_size_um_estimated": mpp, "spot_diameter": 100.0,
            "inter_spot_dist": 200.0, "spots_under_tissue": int(rows.sum()),
            "fullres_px_width": img.shape[1], "fullres_px_height": img.shape[0],
        }  # fmt: skip
        (root / "metadata" / f"{s}.json").write_text(json.dumps(meta))


def test_hest_folder_loads_fits_and_predicts(her2st_all, tmp_path):
    _hest_folder(tmp_path, her2st_all, ["B4", "C3"])
    sdata = cp.datasets.hest(["B4", "C3"], root=tmp_path)
    t = sdata["table"]
    assert list(sdata.images) == ["B4_image", "C3_image"]
    assert t.obs["st_technology"].unique().tolist() == ["Spatial Transcriptomics"]
    assert t.uns["samples"]["C3"]["inter_spot_dist"] == 200.0
    truth = her2st_all["table"].uns["cpnn_spatial"]["um_per_px"]
    assert t.uns["cpnn_spatial"]["um_per_px"] == {"B4_spots": truth["B4_spots"], "C3_spots": truth["C3_spots"]}
    radius = sdata.shapes["B4_spots"]["radius"].iloc[0]
    assert radius == pytest.approx(50.0 / truth["B4_spots"])  # 100 um spots in image pixels
    cp.pp.select_genes(t, n_top_genes=100)
    ref = cp.datasets.wu2021_cid4465()
    cp.pp.build_prototypes(t, ref, cell_type_key="celltype_major")
    model = cp.tl.fit(sdata, train=["B4"], epochs=20, seed=0, encoder="handcrafted", patch_px=64)
    cp.tl.predict(sdata, model, regions=["C3"])
    scores = cp.tl.evaluate(sdata, spots=(t.obs["sample"] == "C3").to_numpy())
    assert np.isfinite(scores["spearman_mean"]).mean() > 0.9 and scores["spearman_mean"].mean() > 0
    assert t.obsm["cpnn_proportions"].loc[t.obs["sample"] == "C3"].notna().all().all()


def test_hest_says_which_file_is_missing_and_how_to_get_it(her2st_all, tmp_path, monkeypatch):
    _hest_folder(tmp_path, her2st_all, ["B4"])
    (tmp_path / "metadata" / "B4.json").unlink()
    with pytest.raises(CpnnError, match=r"metadata/B4.json.*HF_HUB_OFFLINE is set"):
        cp.datasets.hest("B4", root=tmp_path)
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(**kw):
        assert kw["allow_patterns"] == ["st/B4.h5ad", "wsis/B4.tif", "metadata/B4.json"]  # just that sample
        raise GatedRepoError("401 gated", response=SimpleNamespace(headers={}, request=None, status_code=401))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(CpnnError, match=r"HEST-1k is gated.*HF_TOKEN"):
        cp.datasets.hest("B4", root=tmp_path)
    monkeypatch.setenv("CPNN_HEST_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CpnnError, match="elsewhere"):
        cp.datasets.hest("B4")


def test_hest_tells_an_unreachable_hub_from_a_missing_file(her2st_all, tmp_path, monkeypatch):
    """29.12: offline, snapshot_download returns the folder as it is, and cpnn said 'the hub has no file'."""
    import huggingface_hub

    _hest_folder(tmp_path, her2st_all, ["B4"])
    (tmp_path / "wsis" / "B4.tif").unlink()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: str(kw["local_dir"]))  # what it does offline

    def unreachable(self, repo_id, paths, **kw):
        raise ConnectionError("[Errno -3] Temporary failure in name resolution")  # the client's own class varies

    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", unreachable)
    with pytest.raises(CpnnError, match=r"wsis/B4.tif.*hub cannot be reached.*ConnectionError") as e:
        cp.datasets.hest("B4", root=tmp_path)
    assert "has no file" not in str(e.value)

    def listing(self, repo_id, paths, **kw):
        return [SimpleNamespace(path=p) for p in paths if p != "wsis/B4.tif"]

    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", listing)
    with pytest.raises(CpnnError, match=r"hub has no file \['wsis/B4.tif'\].*sample ids"):
        cp.datasets.hest("B4", root=tmp_path)
    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", lambda self, r, paths, **kw: [
        SimpleNamespace(path=p) for p in paths
    ])  # fmt: skip
    with pytest.raises(CpnnError, match=r"did not complete although the hub holds them; call again"):
        cp.datasets.hest("B4", root=tmp_path)


def test_hest_names_a_truncated_counts_file_and_takes_mpp(her2st_all, tmp_path):
    """29.13: a truncated st/<id>.h5ad gave h5py's bare OSError; 29.14: the advice 'pass mpp=' had no mpp=."""
    _hest_folder(tmp_path, her2st_all, ["B4"])
    path = tmp_path / "st" / "B4.h5ad"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(CpnnError, match=r"st/B4\.h5ad' cannot be read as an h5ad file .*Delete it"):
        cp.datasets.hest("B4", root=tmp_path)
    path.write_bytes(good)
    meta = json.loads((tmp_path / "metadata" / "B4.json").read_text())
    truth = meta.pop("pixel_size_um_estimated")
    (tmp_path / "metadata" / "B4.json").write_text(json.dumps(meta))
    with pytest.raises(CpnnError, match="pass mpp="):
        cp.datasets.hest("B4", root=tmp_path)
    sdata = cp.datasets.hest("B4", root=tmp_path, mpp=truth)
    assert sdata["table"].uns["cpnn_spatial"]["um_per_px"]["B4_spots"] == pytest.approx(truth)


# --- Visium HD ------------------------------------------------------------------------------------


def _visium_hd(rng):
    """Square bins of 2, 8 and 16 um over a synthetic tissue at 0.5 um/px, counts from planted compositions."""
    import shapely
    import spatialdata as sd
    from geopandas import GeoDataFrame
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    base, profiles = synthetic_sdata(rng, n_side=8, pitch=64, patch=64, sections=("S1",))
    img = base.images["S1_full"]
    truth = base["table"].obsm["truth"].to_numpy()
    centres = base.shapes["S1_spots"].geometry
    cx, cy = centres.x.to_numpy(), centres.y.to_numpy()
    protos = profiles.to_numpy().T
    h, w = img.shape[-2:]
    shapes, tables = {}, {}
    for um in (2, 8, 16):
        side = um / 0.5  # pixels (0.5 um/px)
        ys, xs = np.meshgrid(np.arange(0, h - side + 1, side), np.arange(0, w - side + 1, side), indexing="ij")
        x0, y0 = xs.ravel(), ys.ravel()
        mx, my = x0 + side / 2, y0 + side / 2
        near = np.argmin((mx[:, None] - cx) ** 2 + (my[:, None] - cy) ** 2, 1)
        inside = (np.abs(mx - cx[near]) < 32) & (np.abs(my - cy[near]) < 32)
        x0, y0, near = x0[inside], y0[inside], near[inside]
        region = f"hd_square_{um:03d}um"
        geo = GeoDataFrame(geometry=shapely.box(x0, y0, x0 + side, y0 + side), index=np.arange(len(x0)))
        shapes[region] = ShapesModel.parse(geo, transformations={"global": Identity()})
        mu = (um / 2) ** 2 * 8.0 * truth[near] @ protos
        a = ad.AnnData(
            sparse.csr_matrix(rng.poisson(mu).astype(np.float32)),
            obs=pd.DataFrame(
                {"region": region, "location_id": np.arange(len(x0))}, index=[f"{um}_{i}" for i in range(len(x0))]
            ),
            var=pd.DataFrame(index=profiles.index),
        )
        a.obs["region"] = a.obs["region"].astype("category")
        a.obsm["truth"] = pd.DataFrame(truth[near], index=a.obs_names, columns=[f"t{k}" for k in range(truth.shape[1])])
        tables[f"square_{um:03d}um"] = TableModel.parse(
            a, region=region, region_key="region", instance_key="location_id"
        )
    from spatialdata.transformations import set_transformation

    set_transformation(img, {"global": Identity()}, set_all=True)
    return sd.SpatialData(images={"hd_full_image": img}, shapes=shapes, tables=tables), profiles


def test_visium_hd_bins_train_as_pseudo_spots_and_predict_at_any_bin_size():
    sdata, profiles = _visium_hd(np.random.default_rng(5))
    with pytest.raises(CpnnError, match=r"Visium HD bins .*square_002um.*cp.pp.aggregate_bins"):
        cp.tl.fit(sdata, encoder="handcrafted")
    with pytest.raises(CpnnError, match="not a whole multiple"):
        cp.pp.aggregate_bins(sdata, bin_size_um=20, table_key="square_008um")
    key = cp.pp.aggregate_bins(sdata, bin_size_um=32)
    assert key == "square_032um_from_002um"
    pseudo, fine = sdata[key], sdata["square_002um"]
    assert pseudo.X.sum() == pytest.approx(fine.X.sum(), rel=0.02)  # counts summed, edges below min_fill dropped
    assert (pseudo.obs["n_bins"] >= 128).all()
    cp.pp.select_genes(pseudo, n_top_genes=60)
    cp.pp.build_prototypes(pseudo, profiles)
    # 16 um patches lie inside one planted block at the centre of a 32 um pseudo-spot or a 16 um bin; no
    # neighbourhood context, which would average patches of another size at another bin size
    model = cp.tl.fit(
        sdata, table_key=key, epochs=60, patch_size_um=16, patch_px=32, encoder="handcrafted", seed=0, context_um=0
    )
    for bins in ("square_016um", "square_008um"):
        cp.tl.predict(sdata, model, table_key=bins)
        props = sdata[bins].obsm["cpnn_proportions"]
        assert props.notna().all().all() and props.shape[0] == sdata[bins].n_obs
        truth = sdata[bins].obsm["truth"]
        r = [np.corrcoef(props[t], truth[t])[0, 1] for t in truth.columns]
        # the planted composition under each bin (8 um bins at block edges see two blocks)
        assert np.mean(r) > (0.9 if bins == "square_016um" else 0.5), (bins, r)


# --- Visium (10x) through squidpy's registry ---------------------------------------------------------


def test_visium_breast_comes_from_squidpy_s_registry(tmp_path):
    from cpnn.datasets._visium import VISIUM_BREAST, registry_entry

    entry, url = registry_entry()
    assert entry.name == VISIUM_BREAST and url.startswith("https://")
    names = {f.name: f.sha256 for f in entry.files}
    assert set(names) == {"filtered_feature_bc_matrix.h5", "spatial.tar.gz", "image.tif"}
    assert all(len(h) == 64 for h in names.values())
    with pytest.raises(CpnnError, match=r"missing and this machine is offline.*SHA-256"):
        cp.datasets.visium_breast(tmp_path / "empty")


def _visium_folder(folder, rng):
    """A Space Ranger output folder (counts h5, spatial/, full-resolution tif) of a small synthetic section."""
    import h5py
    import tifffile
    from skimage.io import imsave

    base, _ = synthetic_sdata(rng, n_side=6, pitch=40, patch=32, sections=("S1",))
    t = base["table"]
    img = np.asarray(base.images["S1_full"].data).transpose(1, 2, 0)
    folder.mkdir(parents=True)
    (folder / "spatial").mkdir()
    tifffile.imwrite(folder / "image.tif", img, photometric="rgb")
    barcodes = [f"AAAC{i:04d}-1" for i in range(t.n_obs)]
    X = sparse.csc_matrix(t.X.T.astype(np.int32))
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(barcodes, dtype="S")
        m["data"], m["indices"], m["indptr"] = X.data, X.indices, X.indptr
        m["shape"] = np.array(X.shape)
        ft = m.create_group("features")
        ft["id"] = np.array([f"ENSG{i:05d}" for i in range(t.n_vars)], dtype="S")
        ft["name"] = np.array(list(t.var_names), dtype="S")
        ft["feature_type"] = np.array(["Gene Expression"] * t.n_vars, dtype="S")
        ft["genome"] = np.array(["GRCh38"] * t.n_vars, dtype="S")
        ft["_all_tag_keys"] = np.array([b"genome"])
        f.attrs["library_ids"] = np.array([b"S1"])
        f.attrs["software_version"] = "spaceranger-2.0.0"
    xy = base.shapes["S1_spots"].geometry
    pos = pd.DataFrame(
        {
            "barcode": barcodes, "in_tissue": 1, "array_row": np.arange(t.n_obs) // 6,
            "array_col": np.arange(t.n_obs) % 6, "pxl_row_in_fullres": xy.y.to_numpy().astype(int),
            "pxl_col_in_fullres": xy.x.to_numpy().astype(int),
        }
    )  # fmt: skip
    pos.to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    scale = {"spot_diameter_fullres": 32.0, "fiducial_diameter_fullres": 50.0, "tissue_hires_scalef": 0.5,
             "tissue_lowres_scalef": 0.25}  # fmt: skip
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scale))
    imsave(folder / "spatial" / "tissue_hires_image.png", img[::2, ::2], check_contrast=False)
    imsave(folder / "spatial" / "tissue_lowres_image.png", img[::4, ::4], check_contrast=False)
    return t


def test_visium_breast_builds_from_a_local_folder(tmp_path):
    folder = tmp_path / "visium"
    truth = _visium_folder(folder, np.random.default_rng(3))
    sdata = cp.datasets.visium_breast(folder)  # every file present: nothing to download
    table = next(iter(sdata.tables.values()))
    assert table.n_obs == truth.n_obs
    cp.pp.embed(sdata, encoder="handcrafted", patch_size_um=55, patch_px=32, table_key=next(iter(sdata.tables)))
    assert np.isfinite(table.obsm["cpnn_embedding"]).all()


def test_deconvolve_visium_hd_bins_directly_and_as_pseudo_spots():
    sdata, profiles = _visium_hd(np.random.default_rng(6))
    key = cp.pp.aggregate_bins(sdata, bin_size_um=32)
    for table_key in ("square_008um", "square_016um", key):
        cp.pp.build_prototypes(sdata, profiles, table_key=table_key)
        cp.pp.deconvolve(sdata, table_key=table_key, chunk_size=50, n_genes=60)
        est = sdata[table_key].obsm["cpnn_deconvolution"]
        assert est.shape[0] == sdata[table_key].n_obs
        ok = est.notna().all(1)
        np.testing.assert_allclose(est[ok].sum(1), 1.0, atol=1e-5)
        if table_key == key:  # pseudo-spots: no planted truth of their own
            assert ok.mean() > 0.9
            continue
        truth = sdata[table_key].obsm["truth"]
        r = [np.corrcoef(est.loc[ok, t], truth.loc[ok, t])[0, 1] for t in truth.columns]
        assert np.mean(r) > (0.9 if table_key != "square_008um" else 0.75), (table_key, r)


def test_a_context_learned_on_other_bins_is_reported_at_prediction(cpnn_log):
    """29.4: a model with spatial context learned on 32 um pseudo-spots, applied to 16 um bins, says so."""
    sdata, profiles = _visium_hd(np.random.default_rng(7))
    key = cp.pp.aggregate_bins(sdata, bin_size_um=32)
    cp.pp.select_genes(sdata[key], n_top_genes=60)
    cp.pp.build_prototypes(sdata[key], profiles)
    model = cp.tl.fit(sdata, table_key=key, epochs=2, patch_size_um=16, patch_px=32, encoder="handcrafted",
                      seed=0, context_um=64, targets="given")  # fmt: skip
    assert model.config.bin_um == 32
    cp.tl.predict(sdata, model, table_key=key)
    assert "context" not in cpnn_log()
    cp.tl.predict(sdata, model, table_key="square_016um")
    assert "learned on 32 um bins, but table 'square_016um' holds 16 um bins" in cpnn_log()
    assert "data_kwargs={'context_um': 0}" in cpnn_log()


def test_aggregate_bins_refuses_a_table_mixing_bin_sizes():
    """29.3: 2 um and 4 um bins in one table came out as pseudo-spots of the wrong size."""
    import shapely
    from geopandas import GeoDataFrame
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    sdata, _ = _visium_hd(np.random.default_rng(8))
    shapes = sdata.shapes["hd_square_002um"]
    b = shapes.geometry.bounds.to_numpy()
    half = np.arange(len(b)) < len(b) // 2
    side = np.where(half, 2 * (b[:, 2] - b[:, 0]), b[:, 2] - b[:, 0])  # the first half as 4 um bins
    geo = GeoDataFrame(geometry=shapely.box(b[:, 0], b[:, 1], b[:, 0] + side, b[:, 1] + side), index=shapes.index)
    sdata.shapes["hd_square_002um"] = ShapesModel.parse(geo, transformations=get_transformation(shapes, get_all=True))
    with pytest.raises(CpnnError, match=r"mixes square bins of 2 sizes .*its own table"):
        cp.pp.aggregate_bins(sdata, bin_size_um=16, table_key="square_002um")
    assert not [k for k in sdata.tables if "from" in k]


def test_a_truncated_slide_file_is_named_when_opened(tmp_path, rgb):
    """29.15: a truncated TIFF was accepted by read_wsi, then tiling failed with a codec error naming no file."""
    path = write_pyramid(tmp_path / "cut.tif", rgb, mpp=0.5, compression="zlib", tile=128)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(CpnnError, match=r"'cut\.tif'.*truncated or damaged"):
        cp.io.read_wsi(path)


def test_a_planar_slide_file_is_named_with_the_conversion(tmp_path, rgb):
    """29.16: a TIFF with separate colour planes gave tiffslide's bare NotImplementedError."""
    import tifffile

    path = tmp_path / "planar.tif"
    planes = np.moveaxis(rgb, -1, 0)  # (3, y, x)
    tifffile.imwrite(path, planes, photometric="rgb", planarconfig="separate", tile=(128, 128))
    with pytest.raises(CpnnError, match=r"'planar\.tif' stores its colour channels as separate planes.*vips tiffsave"):
        cp.io.read_wsi(path, mpp=0.5)


def test_a_grey_slide_with_tissue_is_tiled():
    """29.17: a one-channel slide with tissue gave 'No tissue tile found ... check mpp='."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    rng = np.random.default_rng(1)
    grey = np.clip(rng.normal(240, 2, size=(512, 512)), 0, 255)
    grey[:, :256] = np.clip(rng.normal(120, 15, size=(512, 256)), 0, 255)  # tissue on the left half
    img = np.repeat(grey.astype(np.uint8)[None], 3, 0)
    sdata = sd.SpatialData(images={"grey": Image2DModel.parse(img, dims=("c", "y", "x"))})
    cp.pp.tile(sdata, mpp=1.0, tile_size_um=32)
    x = sdata.tables["cpnn_tiles"].obsm["spatial"][:, 0]
    assert len(x) >= 100 and (x < 256 + 32).all()
