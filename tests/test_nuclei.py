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


def planted(
    rng, n, radius_um, *, touching=False, px=224, stain=(0.30, 0.18, 0.50), background=(0.95, 0.70, 0.85), where=None
):
    """A tile of eosin-pink stroma with ``n`` haematoxylin-dark discs of a known radius; returns (rgb, n placed).

    ``where``: a list that receives the discs' centres (row, column).
    """
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
    if where is not None:
        where.extend(centres)
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


# --- #39: segment once per region, the nuclei as a SpatialData points element ---------------------------------


@pytest.fixture(scope="module")
def b4_tiles():
    """B4 with 16 um tiles; a mask of 150 neighbouring tiles in the middle of the tissue (dense, overlapping patches)."""
    sdata = cp.datasets.her2st(sections=["B4"])
    cp.pp.tile(sdata, tile_size_um=16)
    table = sdata["cpnn_tiles"]
    rc = table.obs[["row", "col"]].to_numpy()
    d = np.abs(rc - np.median(rc, 0)).max(1)
    mask = np.zeros(table.n_obs, bool)
    mask[np.argsort(d, kind="stable")[:150]] = True
    return sdata, mask


def _reader(sdata, table_key, mask):
    from cpnn.data import region_images
    from cpnn.data._windows import RegionReader

    (r,) = region_images(sdata, sdata[table_key], mask)
    return RegionReader(r, patch_native=round(112 / r.um_per_px), patch_px=224)


def test_patch_mode_is_forward_and_the_fast_maxima_are_h_maxima(her2st_all):
    """Segmenting each patch alone through a region reader gives forward's features exactly; the object-wise
    h-maxima of a window of a million pixels are skimage's."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    from cpnn.data import PatchDataset, model_input
    from cpnn.models.encoders._nuclei import haematoxylin, nuclear_maxima, optical_density, otsu_cut, tissue_mask
    from cpnn.models.encoders._nuclei_regions import region_nuclei

    table = her2st_all["table"]
    mask = np.zeros(table.n_obs, bool)
    mask[np.flatnonzero(table.obs["section"].to_numpy() == "C3")[:12]] = True
    reader = _reader(her2st_all, "table", mask)
    feats, nuclei, mode = region_nuclei(reader, UM, segment="patch")
    order, patches = PatchDataset([reader.region], patch_size_um=112, out_px=224, block_size=64)[0]
    z = NucleiEncoder()(model_input(patches, 224)).numpy()
    where = {int(v): k for k, v in enumerate(reader.region.obs_index)}
    np.testing.assert_array_equal(np.stack([feats[where[int(i)]] for i in order]), z[:, : feats.shape[1]])
    assert mode == "patch" and len(nuclei["x"]) > 100
    # a 1,000 x 1,000 window
    cx, cy = np.median(reader.region.centers_px, 0).astype(int)
    rgb = reader.read(cx - 360, cy - 360, cx + 360, cy + 360)
    od = optical_density(rgb)
    h = ndi.gaussian_filter(haematoxylin(rgb, od=od), sigma=1.0)
    tissue = tissue_mask(rgb, od=od)
    fg = ndi.binary_opening(h > otsu_cut(h[tissue]), iterations=1) & tissue
    dist = ndi.distance_transform_edt(fg)
    assert dist.size > 250_000
    ours = nuclear_maxima(dist, 1.0, fg)
    np.testing.assert_array_equal(ours, h_maxima(dist, 1.0).astype(bool) & (dist >= 1.0))


def test_segment_once_on_dense_tiles_matches_per_patch_and_counts_points(b4_tiles):
    """#39: 150 overlapping patches segmented once agree with each patch segmented alone; the nuclei are a
    points element, and obs['cpnn_n_nuclei'] counts the points in each patch."""
    sdata, mask = b4_tiles
    table = sdata["cpnn_tiles"]
    cp.pp.embed(sdata, encoder="nuclei", encoder_kwargs={"segment": "patch"}, table_key="cpnn_tiles", spots=mask,
                key_added="alone")  # fmt: skip
    cp.pp.embed(sdata, encoder="nuclei", table_key="cpnn_tiles", spots=mask)
    once, alone = table.obsm["cpnn_embedding"][mask], table.obsm["alone"][mask]
    col = {name: i for i, name in enumerate(MORPHOMETRY)}
    assert np.corrcoef(once[:, col["n_nuclei"]], alone[:, col["n_nuclei"]])[0, 1] > 0.9
    assert np.abs(once[:, col["tissue_fraction"]] - alone[:, col["tissue_fraction"]]).max() < 0.01
    assert np.abs(once[:, col["nuclear_area_fraction"]] - alone[:, col["nuclear_area_fraction"]]).mean() < 0.03
    assert abs(once[:, col["n_nuclei"]].mean() / alone[:, col["n_nuclei"]].mean() - 1) < 0.15
    np.testing.assert_array_equal(once[:, 31:], alone[:, 31:])  # the colour statistics are per patch in both
    name = "cpnn_nuclei_cpnn_tiles_B4_image"
    points = sdata.points[name].compute()
    assert {"x", "y", "area", "eccentricity", "solidity", "h", "label"} <= set(points.columns)
    assert set(points["label"].cat.categories) <= {"small_round_dark", "elongated", "large", "other"}
    record = table.uns["cpnn"]["embeddings"]["cpnn_embedding"]["elements"]["cpnn_tiles_B4_image"]
    assert record["element"] == name
    # the count is a count over the element: points whose position lies in the spot's patch box
    reader = _reader(sdata, "cpnn_tiles", mask)
    lo = reader.corners
    xy = points[["x", "y"]].to_numpy()
    size = reader.patch_native
    inside = [(np.all(xy >= c, 1) & np.all(xy < c + size, 1)).sum() for c in lo]
    counts = table.obs["cpnn_n_nuclei"].to_numpy()[reader.region.obs_index]
    assert np.abs(np.asarray(inside) - counts).max() <= 1  # a nucleus on a box edge may round either way
    # points carry the image's transformation: they lie on the tissue in the section's coordinates
    from spatialdata.transformations import get_transformation

    assert set(get_transformation(sdata.points[name], get_all=True)) == set(
        get_transformation(sdata.images["B4_image"], get_all=True)
    )


def test_the_nuclei_element_draws_with_spatialdata_plot(b4_tiles):
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)

    sdata, mask = b4_tiles
    if "cpnn_nuclei_cpnn_tiles_B4_image" not in sdata.points:
        cp.pp.embed(sdata, encoder="nuclei", table_key="cpnn_tiles", spots=mask)
    ax = plt.figure().gca()
    sub = sdata.subset(["B4_image", "cpnn_nuclei_cpnn_tiles_B4_image"], filter_tables=False)
    sub.pl.render_points("cpnn_nuclei_cpnn_tiles_B4_image", color="label", size=2).pl.show(
        coordinate_systems="B4", ax=ax
    )
    assert len(ax.collections) >= 1 and sum(len(c.get_offsets()) for c in ax.collections) > 100
    plt.close("all")


def test_segment_option_and_feature_version():
    config = encoder_config("nuclei", weights=None, pretrained=False, seed=0, patch_size_um=112.0, patch_px=None)
    assert config["feature_version"] == NucleiEncoder.feature_version == 2  # caches of older definitions are not read
    from cpnn.models.encoders import same_embedding

    assert not same_embedding({k: v for k, v in config.items() if k != "feature_version"}, config)
    with pytest.raises(cp.CpnnError, match="segment"):
        NucleiEncoder.from_config({**config, "kwargs": {"segment": "sometimes"}})
    with pytest.raises(cp.CpnnError, match="takes only"):
        NucleiEncoder.from_config({**config, "kwargs": {"threshold": 2}})
    assert NucleiEncoder.from_config({**config, "kwargs": {"segment": "once"}}).segment == "once"


def test_segment_once_counts_planted_nuclei_across_cells():
    """Planted discs over a region larger than a cell: each counted once, whichever window it was cut by."""
    from scipy.spatial import cKDTree

    from cpnn.data._regions import RegionImage
    from cpnn.data._windows import RegionReader
    from cpnn.models.encoders import _nuclei_regions as R

    rng = np.random.default_rng(0)
    side = 1000  # px at 0.5 um: two cells (CELL_PX 768) per axis
    where: list = []
    rgb, _ = planted(rng, 450, 3.0, px=side, where=where)
    image = (np.moveaxis(rgb, -1, 0) * 255).round().astype(np.uint8)
    centres = np.array([[x, y] for y in range(160, side - 160, 64) for x in range(160, side - 160, 64)], float)
    region = RegionImage("r", "img", image, centres, np.arange(len(centres)), um_per_px=UM)
    reader = RegionReader(region, patch_native=224, patch_px=224)
    feats, nuclei = R.segment_once(reader, UM)
    assert len(R.plan_cells(reader, UM)) == 4
    truth = np.asarray(where)[:, ::-1] + 0.5  # (x, y) in continuous image coordinates
    lo, hi = reader.corners.min(0), reader.corners.max(0) + 224
    truth = truth[np.all(truth >= lo, 1) & np.all(truth < hi, 1)]  # under some patch
    xy = np.c_[nuclei["x"], nuclei["y"]]
    assert abs(len(xy) - len(truth)) <= 0.03 * len(truth), (len(xy), len(truth))  # each found once
    d, _ = cKDTree(truth).query(xy)
    assert np.median(d) < 0.5 and (d < 2).mean() > 0.97  # where they were planted
    counts = [int((np.all(xy >= c, 1) & np.all(xy < c + 224, 1)).sum()) for c in reader.corners]
    np.testing.assert_array_equal(np.round(feats[:, 0] * 100).astype(int), counts)
    planted_counts = np.array([(np.all(truth >= c, 1) & np.all(truth < c + 224, 1)).sum() for c in reader.corners])
    assert np.abs(np.asarray(counts) - planted_counts).max() <= 2


def test_grouped_features_equal_patch_features_spot_by_spot():
    """The vectorised per-spot features of segment-once give patch_features' values, spot by spot."""
    from cpnn.models.encoders._nuclei import patch_features
    from cpnn.models.encoders._nuclei_regions import grouped_features

    rng = np.random.default_rng(3)
    m = 40
    n = rng.integers(0, 30, m)
    n[:3] = (0, 1, 2)  # no nucleus, one (no neighbour), two
    spot = np.repeat(np.arange(m), n)
    nuc = {
        "area": rng.uniform(7, 200, len(spot)),
        "eccentricity": rng.uniform(0, 1, len(spot)),
        "solidity": rng.uniform(0.6, 1, len(spot)),
        "h": rng.choice([0.5, 1.0, 1.5, 2.0], len(spot)),  # ties at the median
    }
    nn_um = rng.uniform(2, 30, len(spot))
    n_px = rng.integers(40_000, 50_176, m).astype(float)
    counts = np.c_[
        rng.uniform(0, 1, m) * n_px, rng.uniform(0, 0.3, m) * n_px, rng.dirichlet(np.ones(10), m) * n_px[:, None]
    ]
    counts[5, 0] = 0.001 * n_px[5]  # under 1 % tissue: no density
    perm = rng.permutation(len(spot))  # pairs in any order
    ours = grouped_features({k: v[perm] for k, v in nuc.items()}, nn_um[perm], spot[perm], n_px=n_px, counts=counts,
                            um_per_px=UM)  # fmt: skip
    for k in range(m):
        sel = spot == k
        ref = patch_features(
            {key: v[sel] for key, v in nuc.items()}, n_px=int(n_px[k]), tissue_px=counts[k, 0],
            nuclear_px=counts[k, 1], lbp_counts=counts[k, 2:], um_per_px=UM, nn_um=nn_um[sel],
        )  # fmt: skip
        np.testing.assert_allclose(ours[k], ref, rtol=1e-6, atol=1e-7, err_msg=str(k))
