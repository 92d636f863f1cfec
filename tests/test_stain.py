"""Stain normalisation (Macenko): estimated per slide, applied identically at fit and at predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cpnn as cp
from cpnn.data._stain import REFERENCE_STAIN, Stain, estimate_stain, normalise_patches, thumbnail

from ._synthetic import synthetic_sdata


def _stained(rng, matrix: np.ndarray, scale: np.ndarray, n: int = 20000) -> np.ndarray:
    """Pixels (n, 3) in [0, 1] made of two stains with the columns of ``matrix`` and background."""
    conc = rng.gamma(2.0, 0.35, size=(2, n)) * scale[:, None]
    conc[:, : n // 5] = 0.0  # glass
    od = (matrix @ conc).T + rng.normal(0, 0.01, size=(n, 3)).clip(0, None)
    return np.exp(-od)


def test_macenko_recovers_a_planted_stain_and_maps_it_onto_the_reference():
    rng = np.random.default_rng(0)
    source = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    source /= np.linalg.norm(source, axis=0)
    pixels = _stained(rng, source, np.array([1.5, 0.6]))
    est = estimate_stain(pixels)
    cosine = (est.matrix * source).sum(0)
    assert (cosine > 0.98).all(), cosine  # the 1st/99th-percentile angles: close to the planted vectors
    reference = Stain.from_config(REFERENCE_STAIN)
    x = torch.as_tensor(pixels.T.reshape(1, 3, 100, 200), dtype=torch.float32)
    out = normalise_patches(x, est, reference).numpy().reshape(3, -1).T
    again = estimate_stain(out)  # the normalised pixels carry the reference's stain and intensities
    assert ((again.matrix * reference.matrix).sum(0) > 0.99).all()
    np.testing.assert_allclose(again.max_concentration, reference.max_concentration, rtol=0.1)
    white = torch.ones(1, 3, 4, 4)
    assert torch.allclose(normalise_patches(white, est, reference), white)
    with pytest.raises(cp.CpnnError, match="looks blank"):
        estimate_stain(np.ones((50, 50, 3)))


def test_two_real_sections_move_towards_one_stain(her2st_all):
    """B4 (patient B) and C3 (patient C): after normalisation their stains are closer to each other."""
    sdata = her2st_all
    thumbs, stains = {}, {}
    for section in ("B4", "C3"):
        element = sdata.images[next(k for k in sdata.images if k.startswith(section))]
        array = element["scale0"]["image"].data if hasattr(element, "children") else element.data
        thumbs[section] = thumbnail(array, max_px=800)
        stains[section] = estimate_stain(thumbs[section])
    reference = Stain.from_config(REFERENCE_STAIN)
    before = np.abs(stains["B4"].matrix - stains["C3"].matrix).sum()
    after = []
    for section, thumb in thumbs.items():
        rgb = torch.as_tensor(thumb.transpose(2, 0, 1)[None], dtype=torch.float32)
        out = normalise_patches(rgb, stains[section], reference)[0].numpy().transpose(1, 2, 0)
        after.append(estimate_stain(out))
    assert np.abs(after[0].matrix - after[1].matrix).sum() < before / 2, (before, after)


def test_fit_records_the_stain_and_predict_applies_the_same(rng, tmp_path):
    sdata, profiles = synthetic_sdata(rng, sections=("S1", "S2"))
    cp.pp.select_genes(sdata, n_top_genes=60)
    cp.pp.build_prototypes(sdata, profiles)
    table = sdata["table"]
    kw = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0, "epochs": 3, "context_um": 0}
    model = cp.tl.fit(sdata, train=["S1"], validation=["S2"], encoder_kwargs={"stain": "macenko"}, **kw)
    stain = model.config["encoder_config"]["stain"]
    assert stain["method"] == "macenko"
    np.testing.assert_allclose(stain["stain_matrix"], REFERENCE_STAIN["stain_matrix"], atol=1e-3)
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = cp.CPNN.load(path)
    assert loaded.config["encoder_config"]["stain"] == stain
    cp.tl.predict(sdata, loaded, regions=["S2"], key_added="stained")
    used = table.uns["cpnn"]["embeddings"][loaded.config["embedding_key"]]["config"]
    assert used["stain"] == stain  # predict embedded S2 with the recorded stain settings
    # the same settings by hand give the embedding predict used; without them the embedding differs
    cp.pp.embed(sdata, encoder="handcrafted", patch_size_um=32, patch_px=32, encoder_kwargs={"stain": "macenko"},
                key_added="z_stain")  # fmt: skip
    cp.pp.embed(sdata, encoder="handcrafted", patch_size_um=32, patch_px=32, key_added="z_raw")
    z_used = np.asarray(table.obsm[loaded.config["embedding_key"]])
    z_stain, z_raw = np.asarray(table.obsm["z_stain"]), np.asarray(table.obsm["z_raw"])
    np.testing.assert_allclose(z_stain, z_used, rtol=1e-5, atol=1e-5)
    assert not np.allclose(z_stain, z_raw, atol=1e-3)
    with pytest.raises(cp.CpnnError, match="encoder_kwargs\\['stain'\\]"):
        cp.pp.embed(sdata, encoder="handcrafted", encoder_kwargs={"stain": "vahadane"}, key_added="z_bad")
    with pytest.raises(cp.CpnnError, match="finetune=False"):
        cp.tl.fit(
            sdata, train=["S1"], **{**kw, "encoder": "resnet18"}, finetune=True, encoder_kwargs={"stain": "macenko"}
        )
