"""encoder="nuclei": the detector on planted nuclei, the registry, obs counts, and real HER2ST patches (issue #27)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cpnn as cp
from cpnn.models import encoder_class, encoder_config
from cpnn.models.encoders import NucleiEncoder
from cpnn.models.encoders._nuclei import MORPHOMETRY, morphometry, nucleus_table, segment_nuclei

UM = 0.5  # micrometres per pixel the encoder reads at


def planted(rng, n, radius_um, *, touching=False, px=224, stain=(0.30, 0.18, 0.50), background=(0.95, 0.70, 0.85)):
    """A tile of eosin-pink stroma with ``n`` haematoxylin-dark discs of a known radius; returns (rgb, n placed)."""
    img = np.ones((px, px, 3)) * np.array(background) + rng.normal(0, 0.02, (px, px, 3))
    yy, xx = np.mgrid[:px, :px]
    r = radius_um / UM
    centres: list[np.ndarray] = []
    for _ in range(20000):
        if len(centres) == n:
            break
        c = rng.uniform(r + 2, px - r - 2, 2)
        if all(np.hypot(*(c - d)) > 2 * r * (0.85 if touching else 1.3) for d in centres):
            centres.append(c)
    for cy, cx in centres:
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        img[disc] = np.array(stain) + rng.normal(0, 0.03, (int(disc.sum()), 3))
    return np.clip(img, 0.0, 1.0), len(centres)


@pytest.mark.parametrize(
    ("n", "radius_um", "touching"),
    [(25, 3.0, False), (45, 2.5, False), (12, 5.0, False), (30, 3.0, True)],
    ids=["lymphocyte-size", "small-crowded", "large", "touching"],
)
def test_planted_nuclei_are_counted_and_sized(n, radius_um, touching):
    rng = np.random.default_rng(n)
    rgb, placed = planted(rng, n, radius_um, touching=touching)
    labels, h, _ = segment_nuclei(rgb, UM)
    nuclei = nucleus_table(labels, h, UM)
    assert abs(len(nuclei["area"]) - placed) <= 0.1 * placed, (len(nuclei["area"]), placed)
    true_area = np.pi * radius_um**2
    assert abs(np.median(nuclei["area"]) - true_area) <= 0.15 * true_area
    f = morphometry(rgb, UM)
    assert f[MORPHOMETRY.index("n_nuclei")] * 100 == pytest.approx(len(nuclei["area"]))  # counts in hundreds
    assert f[MORPHOMETRY.index("eccentricity_q50")] < 0.5  # discs are round
    area_mm2 = (rgb.shape[0] * UM) ** 2 / 1e6
    density = f[MORPHOMETRY.index("nuclei_per_mm2_tissue")] * 1e4  # in 10,000 per mm^2
    assert density == pytest.approx(len(nuclei["area"]) / area_mm2, rel=0.02)


def test_elongated_nuclei_and_glass():
    rng = np.random.default_rng(1)
    px = 224
    img = np.ones((px, px, 3)) * np.array([0.95, 0.70, 0.85]) + rng.normal(0, 0.02, (px, px, 3))
    yy, xx = np.mgrid[:px, :px]
    for k in range(8):  # fibroblast-like: 16 x 3 um ellipses
        cy, cx = 20 + 25 * k, 40 + (k % 2) * 120
        img[((yy - cy) / 3.0) ** 2 + ((xx - cx) / 16.0) ** 2 <= 1] = (0.30, 0.18, 0.50)
    f = morphometry(np.clip(img, 0, 1), UM)
    assert f[MORPHOMETRY.index("share_elongated")] > 0.8
    assert f[MORPHOMETRY.index("n_nuclei")] * 100 == pytest.approx(8)
    # blank glass (grey levels 243 +- 2) and tinted glass (lavender, as scanned HER2ST slides): no tissue, no nuclei
    glass = np.clip(243 / 255 + rng.normal(0, 2 / 255, (px, px, 3)), 0, 1)
    g = morphometry(glass, UM)
    assert g[MORPHOMETRY.index("n_nuclei")] == 0 and g[MORPHOMETRY.index("tissue_fraction")] < 0.01
    tinted = np.clip(np.array([0.84, 0.80, 0.88]) + rng.normal(0, 0.01, (px, px, 3)), 0, 1)
    assert morphometry(tinted, UM)[MORPHOMETRY.index("tissue_fraction")] < 0.05


def test_registered_weight_free_and_at_half_a_micrometre():
    assert encoder_class("nuclei") is NucleiEncoder
    config = encoder_config("nuclei", weights=None, pretrained=False, seed=3, patch_size_um=112.0, patch_px=None)
    assert config["patch_px"] == 224 and config["seed"] == 0  # 0.5 um per pixel; no seed: no random weights
    enc = NucleiEncoder.from_config(config)
    assert enc.pixel_um == pytest.approx(0.5)
    x = torch.rand(2, 3, 224, 224)
    z = enc(x)
    assert z.shape == (2, enc.out_dim)
    assert float(z.abs().max()) < 20  # unit-scale features: raw inputs (preset="paper") need no standardising
    with pytest.raises(cp.CpnnError, match="no weights"):
        NucleiEncoder.from_config({**config, "weights": "x.pt"})
    with pytest.raises(cp.CpnnError, match="1 um per pixel"):
        NucleiEncoder.from_config({**config, "patch_px": 64})  # 1.75 um per pixel: nuclei are 3 pixels


def test_real_her2st_spots_get_nucleus_counts(her2st_all):
    """On real H&E: plausible counts per 112 um patch, written to obs, and more nuclei in cellular tissue."""
    table = her2st_all["table"]
    b4 = np.flatnonzero(table.obs["section"].to_numpy() == "B4")[:24]
    spots = np.zeros(table.n_obs, bool)
    spots[b4] = True
    cp.pp.embed(her2st_all, encoder="nuclei", spots=spots, key_added="z_nuclei")
    counts = table.obs["z_nuclei_n_nuclei"].to_numpy()[spots]  # named after the embedding key (#41.9)
    assert np.isfinite(counts).all() and np.isnan(table.obs["z_nuclei_n_nuclei"].to_numpy()[~spots]).all()
    # a 112 um square of breast tissue holds tens to a few hundred nuclei
    assert 5 <= np.median(counts) <= 400, np.median(counts)
    z = table.obsm["z_nuclei"][spots]
    tissue = z[:, MORPHOMETRY.index("tissue_fraction")]
    assert np.corrcoef(tissue, counts)[0, 1] > 0  # fat and glass hold fewer nuclei than cellular tissue


def test_the_nucleus_table_equals_skimage_regionprops():
    """#27: the per-label sums (and the hull test for solidity) give regionprops' values, 2.3x faster per patch."""
    from skimage.draw import ellipse, polygon
    from skimage.measure import regionprops_table

    rng = np.random.default_rng(5)
    labels = np.zeros((160, 160), np.int32)
    for i in range(1, 26):  # ellipses at any angle, some clipped by the border
        r, c = rng.uniform(0, 160, 2)
        rr, cc = ellipse(r, c, rng.uniform(2, 9), rng.uniform(2, 9), shape=labels.shape, rotation=rng.uniform(0, np.pi))
        labels[rr, cc] = i
    rr, cc = polygon([10, 10, 40, 40, 30, 30], [120, 150, 150, 140, 140, 120], shape=labels.shape)
    labels[rr, cc] = 30  # a non-convex L, whose solidity is well below 1
    labels[labels == 7] = 0  # a label dropped as debris leaves a gap
    h = rng.random(labels.shape)
    ours = nucleus_table(labels, h, 1.0)
    ref = regionprops_table(
        labels, intensity_image=h, properties=("area", "eccentricity", "solidity", "intensity_mean", "centroid")
    )
    keep = (ref["area"] >= 7) & (ref["area"] <= 500)
    assert len(ours["area"]) == keep.sum() > 15 and ours["solidity"].min() < 0.85
    for key, theirs in [("area", "area"), ("eccentricity", "eccentricity"), ("solidity", "solidity"),
                        ("h", "intensity_mean"), ("y", "centroid-0"), ("x", "centroid-1")]:  # fmt: skip
        np.testing.assert_allclose(ours[key], ref[theirs][keep], rtol=1e-9, atol=1e-9, err_msg=key)
