"""Nuclear morphometry per patch: an offline, weight-free encoder that sees cells.

Each patch is read at about 0.5 um per pixel (never coarser than 1 um per pixel): colour
deconvolution (Ruifrok & Johnston) gives a haematoxylin optical-density channel, nuclei are the
connected haematoxylin-rich regions (Otsu threshold with an absolute floor, so that glass and
pale stroma are not called nuclei), touching nuclei are split by a distance-transform watershed,
and every nucleus is measured (area, eccentricity, solidity, mean haematoxylin). The patch's
features are the count and density of nuclei, quantiles of those measures, nearest-neighbour
distances, the shares of small-round-dark (lymphocyte-like), elongated (fibroblast-like) and
large (tumour-like) nuclei, the tissue fraction, a local-binary-pattern texture histogram of the
haematoxylin channel at full resolution, and the hand-crafted colour/texture statistics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import torch

from ..._errors import CpnnError
from ...data._stain import optical_density
from ._base import Encoder
from ._handcrafted import HandcraftedEncoder

#: Micrometres per pixel the patches are read at (the input size follows from the patch size).
NUCLEI_UM_PER_PX = 0.5
#: Nuclear area range kept, in um^2 (a 3 um to a 25 um wide disc).
MIN_AREA_UM2, MAX_AREA_UM2 = 7.0, 500.0
#: Haematoxylin optical density below which nothing is a nucleus, whatever Otsu says.
H_FLOOR = 0.12
#: Saturation above which a pixel is stained tissue (tinted glass and empty fat stay below).
TISSUE_SATURATION = 0.15
#: Mean saturation below which a dark object is grey debris (bubble, fold, pigment), not a nucleus.
MIN_SATURATION = 0.2
#: Morphology classes: small-round-dark (lymphocyte-like), elongated (fibroblast-like), large.
SMALL_UM2, ROUND_ECC, ELONGATED_ECC, LARGE_UM2 = 40.0, 0.75, 0.9, 60.0
QUANTILES = (0.1, 0.5, 0.9)
#: Names of the morphometric features, in order (followed by 10 LBP bins and the hand-crafted ones),
#: each on a unit scale: counts / 100, density / 10,000 per mm^2, areas / 100 um^2, distances / 10 um.
MORPHOMETRY = (
    "n_nuclei",
    "nuclei_per_mm2_tissue",
    *(f"area_q{int(q * 100)}" for q in QUANTILES),
    *(f"eccentricity_q{int(q * 100)}" for q in QUANTILES),
    *(f"solidity_q{int(q * 100)}" for q in QUANTILES),
    *(f"h_intensity_q{int(q * 100)}" for q in QUANTILES),
    "nn_distance_q10",
    "nn_distance_q50",
    "share_small_round_dark",
    "share_elongated",
    "share_large",
    "nuclear_area_fraction",
    "tissue_fraction",
)
_RJ = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])


def haematoxylin(rgb: np.ndarray, *, od: np.ndarray | None = None) -> np.ndarray:
    """Haematoxylin optical density of an RGB image in [0, 1] (H, W, 3), by Ruifrok-Johnston colour deconvolution.

    ``od``: the image's :func:`optical_density`, when already computed.
    """
    od = optical_density(rgb) if od is None else od
    basis = _RJ / np.linalg.norm(_RJ, axis=1, keepdims=True)
    return np.clip(od.reshape(-1, 3) @ np.linalg.inv(basis)[:, 0], 0.0, None).reshape(rgb.shape[:2])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of an RGB image in [0, 1] (H, W, 3): 0 for grey, towards 1 for pure colour."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # three planes: faster than reducing the last axis
    top = np.maximum(np.maximum(r, g), b)
    return (top - np.minimum(np.minimum(r, g), b)) / np.clip(top, 1e-6, None)


def tissue_mask(rgb: np.ndarray, *, sat: np.ndarray | None = None, od: np.ndarray | None = None) -> np.ndarray:
    """Stained tissue: saturated (eosin, haematoxylin) or dark pixels; glass and empty fat are neither.

    Scanned glass is often tinted (lavender or grey), so optical density alone calls it tissue;
    its colour is unsaturated. ``sat`` and ``od``: the image's :func:`saturation` and
    :func:`optical_density`, when already computed.
    """
    sat = saturation(rgb) if sat is None else sat
    od = optical_density(rgb) if od is None else od
    return (sat > TISSUE_SATURATION) | (od[..., 0] + od[..., 1] + od[..., 2] > 1.0)


def segment_nuclei(rgb: np.ndarray, um_per_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label image of the nuclei of an RGB patch in [0, 1], its haematoxylin channel and tissue mask.

    Parameters
    ----------
    rgb
        (H, W, 3) floats in [0, 1].
    um_per_px
        Micrometres per pixel of ``rgb``.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    od = optical_density(rgb)
    h = ndi.gaussian_filter(haematoxylin(rgb, od=od), sigma=max(0.5, 0.5 / um_per_px))
    sat = saturation(rgb)
    tissue = tissue_mask(rgb, sat=sat, od=od)
    if tissue.mean() < 0.01:
        return np.zeros(h.shape, np.int32), h, tissue
    values = h[tissue]
    try:
        cut = max(float(threshold_otsu(values)), H_FLOOR) if np.ptp(values) > 1e-6 else np.inf
    except ValueError:
        cut = np.inf
    mask = ndi.binary_opening(h > cut, iterations=1) & tissue
    min_px = MIN_AREA_UM2 / um_per_px**2
    labels, n = ndi.label(mask)
    if n == 0:
        return labels.astype(np.int32), h, tissue
    sizes = np.bincount(labels.ravel())
    mask &= sizes[labels] >= min_px
    # split touching nuclei: one marker per maximum of the distance to the background that rises
    # at least 0.5 um above the saddle to its neighbour (h-maxima), so that the ridge of an
    # elongated nucleus stays one marker while two touching round nuclei get two
    dist = ndi.distance_transform_edt(mask)
    peaks = h_maxima(dist, 0.5 / um_per_px).astype(bool) & (dist >= 0.8 / um_per_px)
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3)))
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    # grey or black objects (air bubbles, folds, pigment, pen) are dark in every channel: a stained
    # nucleus is blue-purple, so drop objects whose mean saturation is that of grey
    if labels.max():
        ids = np.arange(1, labels.max() + 1)
        grey = ids[np.asarray(ndi.mean(sat, labels, ids)) < MIN_SATURATION]
        labels[np.isin(labels, grey)] = 0
    return labels, h, tissue


#: Midpoints of a pixel's four edges, relative to its centre (row, column).
_EDGE_MIDPOINTS = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])


def convex_area(mask: np.ndarray) -> float:
    """Pixels of ``mask``'s box whose centres lie in or on the convex hull of its pixels' edge midpoints.

    ``skimage.measure.regionprops``' ``area_convex``, computed from the hull of each row's first
    and last pixel (every hull vertex is one of those) with one half-plane test per hull edge.
    """
    from scipy.spatial import ConvexHull, QhullError

    rows = np.flatnonzero(mask.any(1))
    sub = mask[rows]
    first, last = sub.argmax(1), mask.shape[1] - 1 - sub[:, ::-1].argmax(1)
    points = (np.r_[np.c_[rows, first], np.c_[rows, last]][:, None, :] + _EDGE_MIDPOINTS).reshape(-1, 2)
    try:
        v = points[ConvexHull(points).vertices]  # counter-clockwise
    except QhullError:
        return float(mask.sum())
    edge = np.roll(v, -1, axis=0) - v
    ys = np.arange(mask.shape[0], dtype=float)[None, :, None]
    xs = np.arange(mask.shape[1], dtype=float)[None, None, :]
    side = edge[:, 0, None, None] * (xs - v[:, 1, None, None]) - edge[:, 1, None, None] * (ys - v[:, 0, None, None])
    return float((side >= -1e-9).all(0).sum())


def nucleus_table(labels: np.ndarray, h: np.ndarray, um_per_px: float) -> dict[str, np.ndarray]:
    """Per nucleus: area (um^2), eccentricity, solidity, mean haematoxylin, centroid (um); size-filtered.

    The values of ``skimage.measure.regionprops`` (to rounding), from pixel sums per label:
    eccentricity from the second central moments, solidity from :func:`convex_area`.
    """
    from scipy import ndimage as ndi

    n = int(labels.max())
    if n == 0:
        return {k: np.zeros(0) for k in ("area", "eccentricity", "solidity", "h", "y", "x")}
    flat = labels.ravel()
    yy, xx = np.indices(labels.shape, dtype=float)
    y, x = yy.ravel(), xx.ravel()

    def per_label(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(flat, weights=weights, minlength=n + 1)[1:]

    px = per_label()
    ids = np.flatnonzero(px > 0)  # labels dropped as debris leave gaps
    px = px[ids]
    cy, cx = per_label(y)[ids] / px, per_label(x)[ids] / px
    m20 = per_label(y * y)[ids] / px - cy**2
    m02 = per_label(x * x)[ids] / px - cx**2
    m11 = per_label(y * x)[ids] / px - cy * cx
    half, root = (m20 + m02) / 2, np.sqrt(((m20 - m02) / 2) ** 2 + m11**2)
    major, minor = np.clip(half + root, 0, None), np.clip(half - root, 0, None)
    eccentricity = np.sqrt(1 - minor / np.where(major > 0, major, 1.0)) * (major > 0)
    boxes = ndi.find_objects(labels)
    convex = np.array([convex_area(labels[boxes[i]] == i + 1) for i in ids])
    area = px * um_per_px**2
    keep = (area >= MIN_AREA_UM2) & (area <= MAX_AREA_UM2)
    return {
        "area": area[keep],
        "eccentricity": eccentricity[keep],
        "solidity": (px / convex)[keep],
        "h": (per_label(h.ravel())[ids] / px)[keep],
        "y": cy[keep] * um_per_px,
        "x": cx[keep] * um_per_px,
    }


def morphometry(rgb: np.ndarray, um_per_px: float) -> np.ndarray:
    """The :data:`MORPHOMETRY` features and 10 LBP bins of one RGB patch in [0, 1] (H, W, 3)."""
    from scipy.spatial import cKDTree
    from skimage.feature import local_binary_pattern

    labels, h, tissue = segment_nuclei(rgb, um_per_px)
    nuc = nucleus_table(labels, h, um_per_px)
    n = len(nuc["area"])
    tissue_mm2 = max(float(tissue.sum()) * um_per_px**2 / 1e6, 1e-6)
    # every feature on a unit scale (raw features go straight into the paper's MLP): counts in
    # hundreds, density in 10,000 per mm^2, areas in 100 um^2, distances in 10 um
    feats = [n / 100.0, (n / tissue_mm2 if tissue.mean() >= 0.01 else 0.0) / 1e4]
    scale = {"area": 100.0, "eccentricity": 1.0, "solidity": 1.0, "h": 1.0}
    for key in ("area", "eccentricity", "solidity", "h"):
        feats += [v / scale[key] for v in np.quantile(nuc[key], QUANTILES)] if n else [0.0] * len(QUANTILES)
    if n >= 2:
        d, _ = cKDTree(np.c_[nuc["x"], nuc["y"]]).query(np.c_[nuc["x"], nuc["y"]], k=2)
        feats += [v / 10.0 for v in np.quantile(d[:, 1], (0.1, 0.5))]
    else:
        side = np.sqrt(labels.size) * um_per_px / 10.0
        feats += [side, side]  # no neighbour within the patch: as far as the patch allows
    if n:
        dark = nuc["h"] >= np.median(nuc["h"])
        feats += [
            float(np.mean((nuc["area"] < SMALL_UM2) & (nuc["eccentricity"] < ROUND_ECC) & dark)),
            float(np.mean(nuc["eccentricity"] > ELONGATED_ECC)),
            float(np.mean(nuc["area"] > LARGE_UM2)),
        ]
    else:
        feats += [0.0, 0.0, 0.0]
    feats += [float((labels > 0).mean()), float(tissue.mean())]
    grey = np.clip(h / max(float(h.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
    lbp = local_binary_pattern(grey, P=8, R=1, method="uniform")
    hist = np.bincount(lbp.astype(int).ravel(), minlength=10)[:10] / lbp.size
    return np.asarray(feats + list(hist), dtype=np.float32)


class NucleiEncoder(Encoder):
    """Nuclear morphometry and texture per patch, plus the hand-crafted colour/texture statistics; no weights.

    Patches are read at :data:`NUCLEI_UM_PER_PX` (224 px for the default 112 um patch). Features:
    :data:`MORPHOMETRY` (count, density per mm^2 of tissue, quantiles of nuclear area, eccentricity,
    solidity and haematoxylin, nearest-neighbour distances, shares of small-round-dark, elongated and
    large nuclei, nuclear area and tissue fractions), a 10-bin uniform local-binary-pattern histogram
    of the haematoxylin channel, and :class:`HandcraftedEncoder`'s 42 statistics. The per-patch
    nucleus count is written to ``obs["cpnn_n_nuclei"]`` when spots are embedded. Patches are
    measured in a thread pool (one thread per CPU core, at least 2).
    """

    trainable = False
    seeded = False
    input_um_per_px: ClassVar[float | None] = NUCLEI_UM_PER_PX
    obs_features: ClassVar[dict[str, tuple[int, float]]] = {"n_nuclei": (0, 100.0)}  # counts are in hundreds
    # a nucleus (5-10 um) spans a few pixels of a coarser image: merged, missed or not segmented at all
    coarsest_image_um_per_px: ClassVar[float | None] = 1.0

    def __init__(self, *, um_per_px: float = NUCLEI_UM_PER_PX) -> None:
        super().__init__()
        if not 0 < um_per_px <= 1.0:
            raise CpnnError(
                f"encoder='nuclei' reads patches at {um_per_px:.2f} um per pixel; nuclei need at least 1 um per "
                "pixel: raise patch_px= (or leave it unset)."
            )
        self.pixel_um = float(um_per_px)
        self.colour = HandcraftedEncoder()
        self.out_dim = len(MORPHOMETRY) + 10 + self.colour.out_dim

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NucleiEncoder:
        """The scale follows from the patch geometry (``patch_size_um / patch_px``); there are no weights."""
        if config.get("weights") or config.get("pretrained"):
            raise CpnnError("encoder='nuclei' has no weights; drop encoder_weights=/pretrained=.")
        size, px = config.get("patch_size_um"), config.get("patch_px")
        return cls(um_per_px=float(size) / float(px)) if size and px else cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch of patches (N, 3, H, W) in [0, 1]."""
        x = x.float()
        rgb = x.permute(0, 2, 3, 1).cpu().numpy().astype(np.float64)
        threads = max(2, min(len(rgb), os.cpu_count() or 1))
        if len(rgb) > 1:
            with ThreadPoolExecutor(threads) as pool:
                morph = list(pool.map(lambda p: morphometry(p, self.pixel_um), rgb))
        else:
            morph = [morphometry(p, self.pixel_um) for p in rgb]
        cells = torch.as_tensor(np.stack(morph), dtype=torch.float32, device=x.device)
        return torch.cat([cells, self.colour(x)], dim=1)
