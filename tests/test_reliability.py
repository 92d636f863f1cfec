"""Training safety: kill and resume, non-finite loss, Ctrl-C; the data is never left half-written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse

import cpnn as cp
import cpnn.tl._train as train_mod
from cpnn.models import DirectHead

from ._synthetic import synthetic_sdata

FIT = {"head": "direct", "encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0}


@pytest.fixture(scope="module")
def sdata():
    s, _ = synthetic_sdata(np.random.default_rng(5), n_side=8, sections=("S1", "S2"))
    cp.pp.select_genes(s, n_top_genes=30)
    return s


class _Killed(BaseException):
    """Stands for SIGKILL right after a checkpoint was written (nothing else runs afterwards)."""


def _same_weights(a, b) -> None:
    for (k, v), (_, w) in zip(a.head.state_dict().items(), b.head.state_dict().items(), strict=True):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)


def test_killed_run_resumes_to_the_uninterrupted_result(sdata, tmp_path, monkeypatch):
    kw = {**FIT, "train": ["S1"], "validation": ["S2"], "epochs": 12, "patience": 100}
    reference = cp.tl.fit(sdata, **kw)

    real_save = train_mod._save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 5:
            raise _Killed

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        cp.tl.fit(sdata, **kw, checkpoint_dir=tmp_path)
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)
    (tmp_path / ".checkpoint.pt.deadbeef.tmp").write_bytes(b"half a file")  # a write cut short by the kill
    resumed = cp.tl.fit(sdata, **kw, checkpoint_dir=tmp_path, resume=True)
    assert sdata["table"].uns["cpnn"]["fit"]["resumed_from_epoch"] == 5
    assert resumed.history == reference.history
    _same_weights(resumed, reference)


def test_resume_refuses_a_checkpoint_of_another_run(sdata, tmp_path):
    kw = {**FIT, "train": ["S1"], "epochs": 3}
    cp.tl.fit(sdata, **kw, checkpoint_dir=tmp_path)
    with pytest.raises(cp.CpnnError, match="different training run"):
        cp.tl.fit(sdata, **{**kw, "lr": 5e-4}, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(cp.CpnnError, match="resume=True needs checkpoint_dir"):
        cp.tl.fit(sdata, **kw, resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(cp.CpnnError, match="cannot be read"):
        cp.tl.fit(sdata, **kw, checkpoint_dir=tmp_path, resume=True)


def _loss_fails_at(monkeypatch, call: int, exc: type[BaseException] | None):
    """Make the direct head's training loss NaN (exc=None) or raise ``exc`` at training call ``call``."""
    real = DirectHead.loss
    calls = {"n": 0}

    def loss(self, *args):
        out = real(self, *args)
        if self.training:
            calls["n"] += 1
            if calls["n"] == call:
                if exc is not None:
                    raise exc
                return out * float("nan")
        return out

    monkeypatch.setattr(DirectHead, "loss", loss)


def test_non_finite_loss_stops_with_the_last_good_weights(sdata, monkeypatch):
    kw = {**FIT, "train": ["S1"]}  # 64 spots: one batch per epoch
    three = cp.tl.fit(sdata, **kw, epochs=3)
    _loss_fails_at(monkeypatch, 4, None)
    with pytest.raises(cp.tl.TrainingDiverged, match="at epoch 4; the model keeps the weights of epoch 3") as err:
        cp.tl.fit(sdata, **kw, epochs=10)
    _same_weights(err.value.model, three)


def test_keyboard_interrupt_returns_the_best_model_so_far(sdata, monkeypatch):
    _loss_fails_at(monkeypatch, 6, KeyboardInterrupt)
    model = cp.tl.fit(sdata, **FIT, train=["S1"], validation=["S2"], epochs=50, patience=100)
    info = sdata["table"].uns["cpnn"]["fit"]
    assert info["stop_reason"] == "interrupted"
    assert len(model.history) == 5
    assert info["best_epoch"] == int(np.argmin([r["val_loss"] for r in model.history])) + 1


class _Payload:
    """An arbitrary object: unpickling it would run code, so loading must refuse it."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_model_files_are_versioned_and_never_execute_code(sdata, tmp_path, capsys):
    model = cp.tl.fit(sdata, **FIT, train=["S1"], epochs=2)
    path = tmp_path / "m.pt"
    model.save(path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(cp.CpnnError, match="format version 99, this cpnn reads version 1 or 2"):
        cp.CPNN.load(tmp_path / "future.pt")
    torch.save({"format": "cpnn-model", "evil": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(cp.CpnnError, match="not a readable cpnn model file"):
        cp.CPNN.load(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


# ---- round two: no stale results, no silent corruption, no work lost -------------------------------


def _world(seed=8, **kw):
    s, profiles = synthetic_sdata(np.random.default_rng(seed), n_side=6, sections=("S1", "S2"), **kw)
    cp.pp.select_genes(s, n_top_genes=30)
    cp.pp.build_prototypes(s, profiles)
    return s


CPNN_FIT = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0, "epochs": 20, "context_um": 0}


def _replace_image(s, key, array):
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    s.images[key] = Image2DModel.parse(
        array, dims=("c", "y", "x"), transformations=get_transformation(s.images[key], get_all=True)
    )


def test_a_replaced_image_or_an_override_never_reuses_stale_embeddings():
    """1. The embedding cache is keyed by image content, spot geometry and scale."""
    s = _world()
    model = cp.tl.fit(s, train=["S1"], **CPNN_FIT)
    cp.tl.predict(s, model, regions=["S2"])
    before = s["table"].obsm["cpnn_proportions"].loc[s["table"].obs["section"] == "S2"].to_numpy()
    # the same image element replaced by other content (same name and shape): predictions follow it
    full = np.asarray(s.images["S2_full"])
    _replace_image(s, "S2_full", full[::-1].copy())  # channels swapped: other colours, same shape
    cp.tl.predict(s, model, regions=["S2"])
    after = s["table"].obsm["cpnn_proportions"].loc[s["table"].obs["section"] == "S2"].to_numpy()
    fresh = _world()
    _replace_image(fresh, "S2_full", full[::-1].copy())
    cp.tl.predict(fresh, model, regions=["S2"])
    expected = fresh["table"].obsm["cpnn_proportions"].loc[fresh["table"].obs["section"] == "S2"].to_numpy()
    assert np.abs(after - before).max() > 0.01
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)
    # overrides recompute: another image, another spot diameter
    for override in ({"image_key": "S2_hires"}, {"spot_diameter_um": 48.0}):
        cp.tl.predict(s, model, regions=["S2"], key_added="o", **override)
        fresh = _world()
        _replace_image(fresh, "S2_full", full[::-1].copy())
        cp.tl.predict(fresh, model, regions=["S2"], key_added="o", **override)
        np.testing.assert_allclose(
            s["table"].obsm["o_proportions"].dropna().to_numpy(),
            fresh["table"].obsm["o_proportions"].dropna().to_numpy(),
            rtol=1e-5,
            atol=1e-6,
        )


def test_image_intensity_ranges_are_read_as_8_bit():
    """2. A float image holding 0..255 and a uint16 image holding 8-bit values read like the uint8 original."""
    s = _world()
    cp.pp.embed(s, encoder="handcrafted", patch_size_um=32, patch_px=32, key_added="u8")
    for key in ("S1_full", "S2_full", "S1_hires", "S2_hires"):
        _replace_image(s, key, np.asarray(s.images[key]).astype(np.float32))
    cp.pp.embed(s, encoder="handcrafted", patch_size_um=32, patch_px=32, key_added="f255")
    for key in ("S1_full", "S2_full", "S1_hires", "S2_hires"):
        _replace_image(s, key, np.asarray(s.images[key]).astype(np.uint16))
    cp.pp.embed(s, encoder="handcrafted", patch_size_um=32, patch_px=32, key_added="u16")
    t = s["table"]
    np.testing.assert_allclose(t.obsm["f255"], t.obsm["u8"], atol=1e-5)
    np.testing.assert_allclose(t.obsm["u16"], t.obsm["u8"], atol=1e-5)


def test_a_broken_image_store_is_rebuilt(her2st_all, cpnn_log):
    """3. A chunk missing from, or truncated in, cpnn's own zarr image cache is found and rebuilt."""
    store = next((cp.settings.cachedir / "her2st").glob("B4_image_*.zarr"))
    chunks = sorted(p for p in store.rglob("*") if p.is_file() and p.parent.name.isdigit())
    original = np.asarray(cp.datasets.her2st(["B4"]).images["B4_image"]["scale0"].image[:, 2000:2064, 2000:2064])
    chunks[3].unlink()  # a chunk lost
    chunks[5].write_bytes(chunks[5].read_bytes()[:10])  # a chunk cut short
    from cpnn._core import check_manifest

    assert "missing" in check_manifest(store)
    again = cp.datasets.her2st(["B4"])
    assert "rebuilding" in cpnn_log()
    assert check_manifest(store) == ""
    rebuilt = np.asarray(again.images["B4_image"]["scale0"].image[:, 2000:2064, 2000:2064])
    np.testing.assert_array_equal(rebuilt, original)


def test_manifest_names_each_kind_of_damage(tmp_path):
    from cpnn._core import check_manifest, write_manifest

    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 10)
    assert "no manifest" in check_manifest(tmp_path)
    write_manifest(tmp_path)
    assert check_manifest(tmp_path) == ""
    (tmp_path / "a").write_bytes(b"z" * 100)  # same size, other content
    assert "changed" in check_manifest(tmp_path)
    (tmp_path / "a").write_bytes(b"x" * 99)
    assert "bytes" in check_manifest(tmp_path)
    (tmp_path / "c").write_bytes(b"")
    assert "not in its manifest" in check_manifest(tmp_path)


def test_resume_refuses_changed_counts_or_prototypes(tmp_path):
    """4. The checkpoint fingerprint covers the training counts and the prototypes."""
    s = _world()
    kw = {**CPNN_FIT, "train": ["S1"], "epochs": 3}
    cp.tl.fit(s, **kw, checkpoint_dir=tmp_path)
    t = s["table"]
    X = t.X.toarray()
    X[0, 0] += 1
    t.X = type(t.X)(X)
    with pytest.raises(cp.CpnnError, match="different training run"):
        cp.tl.fit(s, **kw, checkpoint_dir=tmp_path, resume=True)
    X[0, 0] -= 1
    t.X = type(t.X)(X)
    cp.tl.fit(s, **kw, checkpoint_dir=tmp_path, resume=True)  # the same data resumes
    t.varm["cpnn_prototypes"] = np.asarray(t.varm["cpnn_prototypes"]) * 1.01
    with pytest.raises(cp.CpnnError, match="different training run"):
        cp.tl.fit(s, **kw, checkpoint_dir=tmp_path, resume=True)


def test_model_files_carry_a_checksum(tmp_path):
    """5. Every single-byte flip of a model file is refused or loads the very same model."""
    s = _world()
    model = cp.tl.fit(s, train=["S1"], **{**CPNN_FIT, "epochs": 2}, hidden=(8,))
    path = tmp_path / "m.pt"
    model.save(path)
    raw = path.read_bytes()
    rng = np.random.default_rng(0)
    same = refused = 0
    for pos in rng.choice(len(raw), size=150, replace=False):
        flipped = bytearray(raw)
        flipped[pos] ^= 0xFF
        (tmp_path / "f.pt").write_bytes(bytes(flipped))
        try:
            other = cp.CPNN.load(tmp_path / "f.pt")
        except cp.CpnnError:
            refused += 1
            continue
        _same_weights(other, model)
        assert other.config == model.config
        same += 1
    assert refused + same == 150 and refused > 100, (refused, same)


def test_evaluate_refuses_a_mixture_of_panels():
    """6. Spots of one model are never scored with another model's genes."""
    s = _world()
    t = s["table"]
    a = cp.tl.fit(s, train=["S1"], **{**CPNN_FIT, "epochs": 2})
    cp.tl.predict(s, a, regions=["S1"])
    genes = list(t.var_names[t.var["cpnn_selected"].to_numpy(bool)])
    cp.pp.select_genes(s, genes=genes[:20])
    b = cp.tl.fit(s, train=["S1"], **{**CPNN_FIT, "epochs": 2})
    cp.tl.predict(s, b, regions=["S2"])
    assert set(t.obs["cpnn_model"].astype(str)) == {a.fingerprint, b.fingerprint}
    with pytest.raises(cp.CpnnError, match="different gene panels"):
        cp.tl.evaluate(s)
    df = cp.tl.evaluate(s, genes=genes[:20])  # genes both models predicted
    assert len(df) == 20
    with pytest.raises(cp.CpnnError, match="were not predicted by model"):
        cp.tl.evaluate(s, genes=genes[20:25])
    assert len(cp.tl.evaluate(s, spots=["S1"])) == 30  # one model's spots: its own panel


def test_a_degenerate_image_is_passed_over_or_refused(cpnn_log):
    """9. A black sharper image is passed over for the next image covering the spots; forced, it is refused."""
    s = _world()
    black = np.zeros_like(np.asarray(s.images["S1_full"]))
    _replace_image(s, "S1_full", black)
    from cpnn.data import region_images

    t = s["table"]
    s1 = t.obs["section"].to_numpy() == "S1"
    (chosen,) = region_images(s, t, s1)
    err = cpnn_log()
    assert chosen.image_key == "S1_hires" and "passed over" in err and "nearly black" in err
    with pytest.raises(cp.CpnnError, match="no usable image"):
        region_images(s, t, s1, image_key="S1_full")
    _replace_image(s, "S1_hires", np.zeros_like(np.asarray(s.images["S1_hires"])))
    with pytest.raises(cp.CpnnError, match="no usable image"):
        region_images(s, t, s1)


def test_embeddings_that_barely_vary_are_reported(cpnn_log):
    from cpnn.data import region_images
    from cpnn.pp._encode import embed_regions

    s = _world()
    t = s["table"]
    mask = t.obs["section"].to_numpy() == "S1"
    regions = region_images(s, t, mask)
    constant = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    torch.nn.init.zeros_(constant[1].weight)
    embed_regions(regions, int(mask.sum()), np.arange(t.n_obs), constant, patch_size_um=32, patch_px=32, device="cpu")
    assert "barely vary" in cpnn_log()


def test_near_constant_predictions_have_no_correlation():
    """10. Predictions that vary only by float32 rounding are treated as constant."""
    s = _world()
    t = s["table"]
    noise = 1.0 + np.random.default_rng(0).normal(0, 1e-8, size=t.shape)
    t.layers["flat"] = sparse.csr_matrix((np.full(t.shape, 5.0) * noise).astype(np.float32))
    df = cp.tl.evaluate(s, layer="flat")
    assert df["spearman_mean"].isna().all() and df["spearman_pooled"].isna().all()


def test_training_at_its_cap_or_at_its_start_is_reported(cpnn_log):
    """11. A run whose best epoch is its last (or one of its first) warns with the fix and records it."""
    from cpnn.tl._train import TrainResult, training_warnings

    s = _world()
    cp.tl.fit(s, train=["S1"], validation=["S2"], **{**CPNN_FIT, "epochs": 3})
    warnings_ = s["table"].uns["cpnn"]["fit"]["warnings"]
    assert any("stopped at its cap" in w for w in warnings_) and "raise train_kwargs={'epochs'" in cpnn_log().lower()
    early = TrainResult(best_epoch=2, history=[{"epoch": e} for e in range(1, 33)], stop_reason="early stopping")
    (note,) = training_warnings(early, epochs=300, validated=True)
    assert "lowest at epoch 2" in note and "train_kwargs={'lr'" in note
    assert training_warnings(early, epochs=300, validated=False) == []


def test_a_run_still_improving_within_its_patience_at_the_cap_is_not_converged():
    """Issue 26: the best epoch need not be the last one for a run to be cut short by its cap."""
    from cpnn.tl._train import TrainResult, training_warnings

    history = [{"epoch": e} for e in range(1, 301)]
    cut = TrainResult(best_epoch=285, history=history)  # 15 epochs without improvement, patience 30
    (note,) = training_warnings(cut, epochs=300, validated=True, patience=30)
    assert "still improving" in note and "best epoch 285 of 300" in note and "train_kwargs={'epochs'" in note
    settled = TrainResult(best_epoch=250, history=history)  # 50 epochs without improvement: converged
    assert training_warnings(settled, epochs=300, validated=True, patience=30) == []
    stopped = TrainResult(best_epoch=100, history=history[:130], stopped_early=True, stop_reason="early stopping")
    assert training_warnings(stopped, epochs=300, validated=True, patience=30) == []
    s = _world()
    cp.tl.fit(s, train=["S1"], validation=["S2"], **{**CPNN_FIT, "epochs": 3})
    assert s["table"].uns["cpnn"]["fit"]["still_improving_at_cap"]


def test_evaluate_groups_by_region_without_a_section_column():
    """12. The default groupby falls back to the table's region key (spatialdata-io Visium has no section)."""
    s = _world()
    model = cp.tl.fit(s, train=["S1"], **{**CPNN_FIT, "epochs": 2})
    cp.tl.predict(s, model)
    del s["table"].obs["section"]
    df = cp.tl.evaluate(s)
    assert {"spearman_S1_spots", "spearman_S2_spots"} <= set(df.columns)


def test_select_genes_says_it_took_every_gene(cpnn_log):
    """14. Asking for more genes than the table has selects them all, and says how many have no counts."""
    s = _world()
    t = s["table"]
    X = t.X.toarray()
    X[:, 0] = 0
    t.X = sparse.csr_matrix(X)
    cp.pp.select_genes(s, n_top_genes=250)
    assert t.var["cpnn_selected"].all()
    assert f"all {t.n_vars} are selected, 1 of them without any count" in cpnn_log()


def test_model_files_with_a_broken_configuration_are_refused(tmp_path):
    """15. Missing keys, invalid JSON, weights that do not fit, versions written as floats."""
    import json

    s = _world()
    model = cp.tl.fit(s, train=["S1"], **{**CPNN_FIT, "epochs": 1}, hidden=(8,))
    model.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)

    def write(p):
        from cpnn.tl._model import _payload_digest

        p["sha256"] = _payload_digest(p)
        torch.save(p, tmp_path / "x.pt")
        return tmp_path / "x.pt"

    config = json.loads(payload["config"])
    del config["genes"]
    with pytest.raises(cp.CpnnError, match="lacks"):
        cp.CPNN.load(write({**payload, "config": json.dumps(config)}))
    with pytest.raises(cp.CpnnError, match="not valid JSON"):
        cp.CPNN.load(write({**payload, "config": "{not json"}))
    config = json.loads(payload["config"])
    config["genes"] = config["genes"][:10]
    with pytest.raises(cp.CpnnError, match="do not fit its configuration"):
        cp.CPNN.load(write({**payload, "config": json.dumps(config)}))
    assert cp.CPNN.load(write({**payload, "format_version": 2.0})).genes == model.genes
    with pytest.raises(cp.CpnnError, match="no valid model format version"):
        cp.CPNN.load(write({**payload, "format_version": "2"}))


def test_an_interrupted_checkpoint_write_is_cleaned_up(tmp_path):
    """15. Temporary files of a write cut short are removed when the next run starts."""
    s = _world()
    (tmp_path / ".checkpoint.pt.0123abcd.tmp").write_bytes(b"half")
    cp.tl.fit(s, train=["S1"], **{**CPNN_FIT, "epochs": 1}, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


# --- Round three (issue 29) ------------------------------------------------------------------------


def test_a_model_with_non_finite_weights_is_refused_on_load(sdata, tmp_path):
    """29.9: NaN written into a model (and the file re-hashed by hand) is caught at load, not as NaN predictions."""
    from cpnn._core import save_atomic
    from cpnn.tl._model import _payload_digest

    model = cp.tl.fit(sdata, train=["S1"], **{**FIT, "epochs": 2})
    path = tmp_path / "m.pt"
    model.save(path)
    payload = torch.load(path, weights_only=True)
    name = next(iter(payload["head"]))
    payload["head"][name] = torch.full_like(payload["head"][name], float("nan"))
    payload["sha256"] = _payload_digest(payload)
    save_atomic(payload, path)
    with pytest.raises(cp.CpnnError, match=rf"NaN or infinite.*head\.{name}.*retrain"):
        cp.CPNN.load(path)


def test_saving_into_a_folder_that_cannot_be_written_names_the_path(sdata, tmp_path, monkeypatch):
    """29.20: torch's bare 'Permission denied' becomes an error naming the destination."""
    import cpnn.tl._model as model_mod

    model = cp.tl.fit(sdata, train=["S1"], **{**FIT, "epochs": 1})

    def denied(obj, path):
        raise RuntimeError("File .x.tmp cannot be opened: Permission denied")

    monkeypatch.setattr(model_mod, "save_atomic", denied)
    with pytest.raises(cp.CpnnError, match=r"Cannot write the model to '.*locked/m\.pt'.*Permission denied"):
        model.save(tmp_path / "locked" / "m.pt")


def test_duplicated_gene_names_are_refused_with_the_names(sdata):
    """29.25: a table whose var_names repeat is refused by fit (and deconvolve) naming them, not by pandas."""
    dup = sdata["table"].copy()
    names = list(dup.var_names)
    names[1] = names[0]
    dup.var_names = names
    with pytest.raises(cp.CpnnError, match=rf"var_names have 1 duplicates .*{names[0]}.*var_names_make_unique"):
        cp.tl.fit(dup, train=["S1"], **{**FIT, "epochs": 1})
    with pytest.raises(cp.CpnnError, match="var_names_make_unique"):
        cp.pp.deconvolve(dup)


def test_the_same_sample_twice_in_a_collection_is_refused(sdata, tmp_path):
    """29.7: one store under two names would be trained on twice."""
    from cpnn.data import Collection

    with pytest.raises(cp.CpnnError, match=r"samples\['A2'\] and samples\['A'\] are the same store"):
        Collection({"A": tmp_path, "A2": str(tmp_path)})
    with pytest.raises(cp.CpnnError, match="same SpatialData object"):
        Collection({"A": sdata, "B": sdata})


def _edit_in_place(path, new: bytes) -> None:
    """Overwrite ``path``'s bytes (same size) and put its modification time back."""
    import os

    stat = path.stat()
    assert len(new) == stat.st_size
    with open(path, "r+b") as f:
        f.write(new)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_a_file_edited_in_place_is_hashed_again_within_one_process(tmp_path, monkeypatch):
    """29.10: the hashes of data files, encoder weights and sealed stores were reused while size and
    modification time matched, so an in-place edit with the time restored went unseen until a new process."""
    from cpnn._core import check_manifest, write_manifest
    from cpnn.datasets._fetch import fetch
    from cpnn.models.encoders import file_digest

    name = "her2st/res/ST-cluster/lbl/C1-cluster-annotation.tsv.gz"  # a small registered file
    copy = tmp_path / "data" / name
    copy.parent.mkdir(parents=True)
    good = (cp.settings.datadir / name).read_bytes()
    copy.write_bytes(good)
    monkeypatch.setattr(cp.settings, "datadir", tmp_path / "data")
    assert fetch(name) == copy
    _edit_in_place(copy, bytes(b ^ 0xFF for b in good[:64]) + good[64:])
    with pytest.raises(cp.DataFileError, match="corrupt or truncated"):
        fetch(name)

    weights = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(4)}, weights)
    before = file_digest(weights)
    _edit_in_place(weights, weights.read_bytes()[:-8] + bytes(8))
    assert file_digest(weights) != before

    store = tmp_path / "store"
    store.mkdir()
    (store / "a.bin").write_bytes(bytes(100))
    write_manifest(store)
    assert check_manifest(store) == ""
    _edit_in_place(store / "a.bin", bytes([1]) * 100)
    assert "changed since it was written" in check_manifest(store)


def test_an_image_edited_in_place_gets_a_new_digest_within_one_process(tmp_path):
    """29.10, images: the digest keying cached embeddings is read from the pixels at every call."""
    from cpnn.data._content import sample_image

    from ._wsi import write_pyramid

    rng = np.random.default_rng(0)
    first = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    second = first.copy()
    second[200:300, 200:300] = 255 - second[200:300, 200:300]  # an edit under the sampled windows
    path = write_pyramid(tmp_path / "slide.tif", first, mpp=0.5, compression=None, levels=1)
    other = write_pyramid(tmp_path / "other.tif", second, mpp=0.5, compression=None, levels=1)
    image = cp.io.read_wsi(path).images["slide"]["scale0"]["image"].data
    centres = np.array([[250.0, 250.0], [100.0, 400.0]])
    before = sample_image(image, centres, "slide").digest
    assert sample_image(image, centres, "slide").digest == before  # the same pixels: the same digest
    _edit_in_place(path, other.read_bytes())
    assert sample_image(image, centres, "slide").digest != before
    array = first.transpose(2, 0, 1).copy()
    before = sample_image(array, centres, "np").digest
    array[:, 240:260, 240:260] = 0
    assert sample_image(array, centres, "np").digest != before
