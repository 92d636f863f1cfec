"""Scale out: collections of samples, embeddings computed once on disk, several processes with torch.distributed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
import torch

import cpnn as cp

from ._synthetic import synthetic_sdata

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fit.py"
KW = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0, "lr": 3e-3, "context_um": 0}


def _samples(n: int = 4):
    """Four samples (one section each) of one synthetic tissue, with a patient per pair."""
    whole, profiles = synthetic_sdata(np.random.default_rng(40), n_side=8, sections=tuple(f"S{k}" for k in range(n)))
    out = {}
    for k in range(n):
        s = whole.subset([f"S{k}_full", f"S{k}_hires", f"S{k}_spots"], filter_tables=True)
        t = s["table"]
        t.obs["region"] = t.obs["region"].cat.remove_unused_categories()
        t.uns["spatialdata_attrs"]["region"] = [f"S{k}_spots"]
        t.obs["patient"] = f"P{k // 2}"
        out[f"s{k}"] = s
    panel = whole["table"]
    cp.pp.select_genes(panel, n_top_genes=40)
    cp.pp.build_prototypes(panel, profiles)
    return out, panel


def _r(table, key="cpnn_proportions"):
    truth, props = table.obsm["truth"], table.obsm[key]
    return float(np.mean([np.corrcoef(props[c], truth[c])[0, 1] for c in truth.columns]))


def test_a_collection_fits_and_predicts_in_memory_and_from_stores(tmp_path):
    samples, panel = _samples()
    folds = cp.tl.split(samples, by="patient")
    assert [f.attrs["test"] for f in folds] == [["P0"], ["P1"]]
    assert folds[0].to_dict() == {"s0": "test", "s1": "test", "s2": "train", "s3": "validation"}
    fold = folds[1]
    model = cp.tl.fit(samples, train=fold == "train", validation=fold == "validation", panel=panel, epochs=60, **KW)
    cp.tl.predict(samples, model, samples=["s2", "s3"])
    assert _r(samples["s3"]["table"]) > 0.95
    assert "cpnn_proportions" not in samples["s0"]["table"].obsm  # each sample keeps its own results
    # the same collection as zarr stores: the same training, results written back into each store
    paths = []
    for name, s in samples.items():
        s.write(tmp_path / f"{name}.zarr")
        paths.append(tmp_path / f"{name}.zarr")
    again = cp.tl.fit(paths, train=["s0"], validation=["s1"], panel=panel, epochs=60, **KW)
    assert again.history == model.history
    cp.tl.predict(paths, again, samples=["s3"], key_added="stored")
    stored = sd.read_zarr(tmp_path / "s3.zarr")["table"]
    np.testing.assert_allclose(
        stored.obsm["stored_proportions"].to_numpy(),
        samples["s3"]["table"].obsm["cpnn_proportions"].to_numpy(),
        rtol=1e-5,
    )
    with pytest.raises(cp.CpnnError, match="not samples of the collection"):
        cp.tl.fit(samples, train=["s9"], panel=panel, **KW)


def test_embeddings_are_computed_once_and_never_stale(tmp_path, monkeypatch):
    samples, panel = _samples(2)
    monkeypatch.setattr(cp.settings, "_cachedir", tmp_path)
    calls = {"n": 0}
    import cpnn.pp._store as store

    real = store.embed_regions

    def counting(*args, **kw):
        calls["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(store, "embed_regions", counting)
    cp.pp.embed(samples, encoder="handcrafted", patch_size_um=32, patch_px=32)
    assert calls["n"] == 2 and len(list((tmp_path / "embeddings").iterdir())) == 2
    cp.pp.embed(samples, encoder="handcrafted", patch_size_um=32, patch_px=32)
    cp.tl.fit(samples, train=["s0"], panel=panel, epochs=2, **KW)
    assert calls["n"] == 2  # read from disk, never computed again
    folder = next(f for f in (tmp_path / "embeddings").iterdir() if "S0_spots" in (f / "meta.json").read_text())
    z = np.load(folder / "z.npy")
    assert z.dtype == np.float16 and z.shape[0] == samples["s0"]["table"].n_obs
    # another image: another fingerprint, so a new folder; the stale one is never read
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    s = samples["s1"]
    for key in ("S1_full", "S1_hires"):
        arr = np.asarray(s.images[key])
        s.images[key] = Image2DModel.parse(
            arr[::-1].copy(), dims=("c", "y", "x"), transformations=get_transformation(s.images[key], get_all=True)
        )
    cp.pp.embed(samples, encoder="handcrafted", patch_size_um=32, patch_px=32)
    assert calls["n"] == 3 and len(list((tmp_path / "embeddings").iterdir())) == 3
    # another encoder setting: another folder too
    cp.pp.embed(samples, encoder="handcrafted", patch_size_um=24, patch_px=32)
    assert calls["n"] == 5
    # a damaged folder is found and rebuilt
    (folder / "z.npy").write_bytes(b"broken")
    cp.pp.embed(samples, encoder="handcrafted", patch_size_um=32, patch_px=32)
    assert calls["n"] == 6


def _run(args, tmp_path, nproc: int = 1):
    env = {**os.environ, "CPNN_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable]
    )
    return subprocess.run(
        [*launcher, str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )


def test_two_processes_train_as_one_and_resume(tmp_path):
    """2 gloo processes give the single process's result (same seed, same global batch); a killed
    2-process run resumes to the uninterrupted one bit for bit."""
    one = _run([tmp_path / "one.pt"], tmp_path)
    two = _run([tmp_path / "two.pt", "--checkpoint", tmp_path / "ck"], tmp_path, nproc=2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = torch.load(tmp_path / "one.pt", weights_only=False), torch.load(tmp_path / "two.pt", weights_only=False)
    assert b["world"] == 2 and a["world"] == 1
    np.testing.assert_allclose([r["val_loss"] for r in a["history"]], [r["val_loss"] for r in b["history"]], rtol=1e-4)
    for k in a["head"]:
        torch.testing.assert_close(a["head"][k], b["head"][k], rtol=1e-3, atol=1e-4, msg=k)
    killed = _run([tmp_path / "k.pt", "--checkpoint", tmp_path / "ck2", "--kill-at", 5], tmp_path, nproc=2)
    assert killed.returncode != 0 and (tmp_path / "ck2" / "checkpoint.pt").exists()
    resumed = _run([tmp_path / "r.pt", "--checkpoint", tmp_path / "ck2", "--resume"], tmp_path, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    c = torch.load(tmp_path / "r.pt", weights_only=False)
    assert c["history"] == b["history"]
    for k in b["head"]:
        torch.testing.assert_close(b["head"][k], c["head"][k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("head", ["ridge", "direct", "cpnn"])
def test_every_head_fits_in_memory_and_on_a_collection(head, tmp_path, monkeypatch):
    """Each head on both input kinds (28): ridge used to fail on collections (no .counts on the shard dataset)."""
    monkeypatch.setattr(cp.settings, "_cachedir", tmp_path)
    samples, panel = _samples(2)
    kw = {**KW, "head": head, "epochs": 3}
    if head == "cpnn":
        kw["targets"] = "given"
    on_disk = cp.tl.fit(samples, train=["s0"], validation=["s1"], panel=panel, **kw)
    whole, profiles = synthetic_sdata(np.random.default_rng(40), n_side=8, sections=("S0", "S1"))
    cp.pp.select_genes(whole, n_top_genes=40)
    cp.pp.build_prototypes(whole, profiles)
    in_memory = cp.tl.fit(whole, train=["S0"], validation=["S1"], **kw)
    assert on_disk.config.head == in_memory.config.head == head
    with pytest.warns(FutureWarning, match=r"regions= on a collection names its samples\) is now samples="):
        cp.tl.predict(samples, on_disk, regions=["s1"])  # the 0.2 spelling, one release more
    table = samples["s1"]["table"]
    layer = table[:, list(on_disk.config.genes)].layers["cpnn"]
    pred = layer.toarray() if hasattr(layer, "toarray") else np.asarray(layer, dtype=float)
    assert np.isfinite(pred).all() and pred.std(0).max() > 0
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # run folders removed


def test_sample_key_works_on_a_collection_and_failed_runs_leave_no_folder(tmp_path, monkeypatch):
    """sample_key used to be ignored for collections (28); a failed collection fit left its run folder (29.8)."""
    monkeypatch.setattr(cp.settings, "_cachedir", tmp_path)
    samples, panel = _samples(3)
    model = cp.tl.fit(samples, train=["s0", "s1"], validation=["s2"], panel=panel, sample_key="patient",
                      epochs=3, targets="given", **KW)  # fmt: skip
    assert list(model.config.samples) == ["P0"]
    model = cp.tl.fit(samples, train=["s0", "s2"], panel=panel, sample_key="patient", epochs=3, targets="given", **KW)
    assert list(model.config.samples) == ["P0", "P1"]
    with pytest.raises(cp.CpnnError, match=r"sample_key \(sample 's0'\)"):
        cp.tl.fit(samples, train=["s0"], panel=panel, sample_key="donor", epochs=1, targets="given", **KW)
    assert not any((tmp_path / "runs").iterdir())


def test_a_failed_table_write_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    """29.1: a write that fails half-way (disk full) must not leave the store without its table."""
    from spatialdata import SpatialData

    samples, panel = _samples(2)
    paths = []
    for name, s in samples.items():
        s.write(tmp_path / f"{name}.zarr")
        paths.append(tmp_path / f"{name}.zarr")
    model = cp.tl.fit(paths, train=["s0"], panel=panel, epochs=2, targets="given", **KW)
    before = sd.read_zarr(paths[1])["table"]
    real = SpatialData.write

    def disk_full(self, path, **kw):
        real(self, path, **kw)  # the new table is (partly) on disk ...
        raise OSError(28, "No space left on device")  # ... when the disk fills up

    monkeypatch.setattr(SpatialData, "write", disk_full)
    with pytest.raises(cp.CpnnError, match=r"sample 's1'.*No space left.*still holds its previous table"):
        cp.tl.predict(paths, model, samples=["s1"])
    monkeypatch.undo()
    after = sd.read_zarr(paths[1])["table"]
    assert "cpnn_proportions" not in after.obsm and list(after.obs.columns) == list(before.obs.columns)
    np.testing.assert_array_equal(after.X.toarray(), before.X.toarray())
    assert not [p.name for p in (paths[1] / "tables").iterdir() if p.name.startswith(".")]  # no copy left behind
    assert not (paths[1] / ".cpnn-staging").exists()
    cp.tl.predict(paths, model, samples=["s1"])  # and the next try writes normally
    assert "cpnn_proportions" in sd.read_zarr(paths[1])["table"].obsm


def test_a_process_whose_peers_never_start_fails_with_the_rendezvous_named(tmp_path):
    """29.11: WORLD_SIZE=2 with one process used to wait 30 minutes in silence."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}  # fmt: skip
    code = "from cpnn._core import dist; dist.setup('cpu', timeout_s=3)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"process group at 127.0.0.1:{port} did not assemble within 3 s" in done.stderr
    assert "WORLD_SIZE=2" in done.stderr
    assert "rank 0 has waited 2 s of 3 s" in done.stderr  # 41.11: said at the default verbosity while it waits
