from __future__ import annotations

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

import cpnn as cp
from cpnn.datasets import _fetch


def _counts(section):
    return pd.read_csv(cp.datasets.fetch(f"her2st/data/ST-cnts/{section}.tsv.gz"), sep="\t", index_col=0)


def test_her2st_six_sections_match_files(her2st_all):
    sdata = her2st_all
    table = sdata["table"]
    assert set(sdata.images) == {f"{s}_image" for s in cp.datasets.HER2ST_IMAGED}
    assert set(sdata.shapes) == {f"{s}_spots" for s in cp.datasets.HER2ST_IMAGED}
    assert table.n_obs == 1193
    assert table.obs["section"].value_counts().to_dict() == {
        "B4": 283,
        "C2": 187,
        "C4": 184,
        "C5": 181,
        "C3": 180,
        "C6": 178,
    }
    # counts equal the published file for the shared genes
    raw = _counts("C3")
    sub = table[table.obs["section"] == "C3"]
    genes = sub.var_names[:200]
    np.testing.assert_array_equal(
        sub[:, genes].X.toarray(), raw.loc[[i.split("_", 1)[1] for i in sub.obs_names], genes].to_numpy()
    )
    assert np.allclose(table.X.data, np.round(table.X.data))
    for col in ("section", "patient", "array_row", "array_col", "region", "spot_id"):
        assert col in table.obs
    assert table.obsm["spatial"].shape == (1193, 2)
    mpp = table.uns["cpnn_spatial"]["um_per_px"]
    assert all(0.6 < v < 0.8 for v in mpp.values())
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region_key"] == "region" and attrs["instance_key"] == "spot_id"


def test_spot_centres_on_tissue(her2st_all):
    """Every spot centre lies inside its image and over tissue (darker than the slide background)."""
    sdata = her2st_all
    table = sdata["table"]
    for s in cp.datasets.HER2ST_IMAGED:
        img = sdata.images[f"{s}_image"]["scale2"]["image"].values  # 4x downsampled
        xy = table.obsm["spatial"][table.obs["section"].to_numpy() == s] / 4
        h, w = img.shape[1:]
        assert (xy[:, 0] >= 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] >= 0).all() and (xy[:, 1] < h).all()
        grey = img.mean(0)
        spot_grey = np.array([grey[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4].mean() for x, y in xy])
        background = np.percentile(grey, 95)
        assert np.median(spot_grey) < background - 20, s
        assert (spot_grey < background - 5).mean() > 0.95, s


def test_second_load_reads_zarr_not_jpeg(her2st_all, monkeypatch):
    import imagecodecs

    def boom(*a, **k):
        raise AssertionError("the JPEG was decoded again")

    monkeypatch.setattr(imagecodecs, "jpeg8_decode", boom)
    sdata = cp.datasets.her2st(sections=["C3"])
    arr = sdata.images["C3_image"]["scale0"]["image"].data
    assert "zarr" in str(arr.dask) or hasattr(arr, "dask")
    assert arr.shape == (3, 9936, 9270)


def test_sections_without_image(her2st_all):
    sdata = cp.datasets.her2st(sections=["A1", "B4"], images=False)
    assert len(sdata.images) == 0
    assert set(sdata["table"].obs["section"].unique()) == {"A1", "B4"}
    with pytest.raises(cp.CpnnError, match="no published H&E image"):
        cp.datasets.her2st(sections=["A1"])
    with pytest.raises(cp.CpnnError, match="unknown HER2ST section"):
        cp.datasets.her2st(sections=["Z9"], images=False)


def test_proportions_align(her2st_all):
    props = cp.datasets.her2st_proportions()
    table = her2st_all["table"]
    assert props.index.isin(table.obs_names).mean() > 0.99
    assert {"CAFs", "Epithelial", "T-cells"} <= set(props.columns)
    np.testing.assert_allclose(props.sum(1), 1.0, atol=1e-3)


def test_wu2021_loaders(cid4465):
    assert cid4465.shape == (1564, 29733)
    np.testing.assert_array_equal(np.asarray(cid4465.X.sum(1)).ravel(), cid4465.obs["nCount_RNA"].to_numpy())
    assert cid4465.obs["celltype_major"].nunique() == 9
    prof = cp.datasets.wu2021_profiles()
    assert prof.shape == (25658, 76)
    np.testing.assert_allclose(prof.sum(0), 1.0, atol=1e-4)
    assert set(prof.attrs["cell_type_map"].values()) >= {"CAFs", "T-cells", "Cancer Epithelial"}
    assert len(cp.datasets.histogene_genes()) == 785


def test_corrupt_file_raises_hash_error(tmp_path, monkeypatch):
    rel = "her2st/data/ST-spotfiles/B4_selection.tsv"
    good = cp.datasets.fetch(rel)
    (tmp_path / rel).parent.mkdir(parents=True)
    data = good.read_bytes()
    (tmp_path / rel).write_bytes(data[: len(data) // 2])  # truncated
    monkeypatch.setattr(cp.settings, "_datadir", tmp_path)
    with pytest.raises(cp.DataFileError, match=r"B4_selection\.tsv"):
        cp.datasets.fetch(rel)


def test_present_files_are_read_in_place(monkeypatch, tmp_path):
    """A data dir holding the file is only read: nothing is written next to it."""
    rel = "her2st/data/ST-cnts/B4.tsv.gz"
    src = cp.datasets.fetch(rel)
    (tmp_path / rel).parent.mkdir(parents=True)
    shutil.copy(src, tmp_path / rel)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    monkeypatch.setattr(cp.settings, "_datadir", tmp_path)
    monkeypatch.setattr(_fetch, "_writable", lambda folder: (_ for _ in ()).throw(AssertionError("write check")))
    assert cp.datasets.fetch(rel) == tmp_path / rel
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_missing_file_downloads_into_cache_when_datadir_read_only(monkeypatch, tmp_path):
    """With a read-only data dir, a missing file is fetched (here from a loopback server) into the cache dir."""
    import functools
    import http.server
    import threading

    rel = "her2st/data/ST-spotfiles/C3_selection.tsv"
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(cp.datasets.fetch(rel), served / "C3_selection.tsv")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sha, _ = _fetch.registry()[rel]
        url = f"http://127.0.0.1:{server.server_address[1]}/C3_selection.tsv"
        monkeypatch.setitem(_fetch.registry(), rel, (sha, url))
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        monkeypatch.setattr(cp.settings, "_datadir", readonly)
        monkeypatch.setattr(cp.settings, "_cachedir", tmp_path / "cache")
        monkeypatch.setattr(_fetch, "_writable", lambda folder: folder != readonly)
        path = cp.datasets.fetch(rel)
        assert path == tmp_path / "cache" / "downloads" / rel
        assert list(readonly.iterdir()) == []
        assert path.read_bytes() == (served / "C3_selection.tsv").read_bytes()
    finally:
        server.shutdown()


def test_unknown_file():
    with pytest.raises(KeyError):
        cp.datasets.fetch("nope.txt")


def test_gz_counts_readable():
    with gzip.open(cp.datasets.fetch("her2st/data/ST-cnts/C6.tsv.gz"), "rt") as f:
        assert f.readline().count("\t") > 10000
