"""Nuclear morphometry of a patch or window: segmentation, the nucleus table and the per-patch features.

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

from collections.abc import Mapping

import numpy as np
import torch

from ...data._stain import optical_density

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


def otsu_cut(values: np.ndarray) -> float:
    """Otsu's threshold of haematoxylin values, never below :data:`H_FLOOR`; ``inf`` when they do not vary."""
    from skimage.filters import threshold_otsu

    try:
        return max(float(threshold_otsu(values)), H_FLOOR) if np.ptp(values) > 1e-6 else np.inf
    except ValueError:
        return np.inf


def local_cut(h: np.ndarray, tissue: np.ndarray, block: int) -> np.ndarray:
    """Otsu's threshold over the tissue of each ``block``-pixel square, interpolated bilinearly between squares.

    What segmenting each patch alone does (a threshold per patch), for a window many patches
    share; a square with under 1 % tissue takes the window's threshold.
    """
    ny, nx = -(-h.shape[0] // block), -(-h.shape[1] // block)
    whole = otsu_cut(h[tissue]) if tissue.any() else np.inf
    grid = np.full((ny, nx), whole)
    for i in range(ny):
        for j in range(nx):
            sub = (slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block))
            t = tissue[sub]
            if t.mean() >= 0.01:
                grid[i, j] = otsu_cut(h[sub][t])
    finite = np.isfinite(grid)
    if not finite.any():
        return np.full(h.shape, np.inf)
    grid[~finite] = grid[finite].max()  # a square whose tissue does not vary: the strictest threshold found
    return block_map(grid, h.shape, block)


#: Pixels below which :func:`nuclear_maxima` reconstructs the whole image at once.
WHOLE_IMAGE_PX = 250_000


def nuclear_maxima(dist: np.ndarray, h: float, mask: np.ndarray) -> np.ndarray:
    """``skimage.morphology.h_maxima(dist, h)`` where ``dist >= h``, computed object by object.

    ``dist`` is a distance transform, 0 outside ``mask``, so no reconstruction path joins two
    8-connected objects without passing through 0: within an object, wherever ``dist >= h``, its
    h-maxima are those of the whole image. An object with one local-maximum plateau has that
    plateau (its top) as its only h-maximum; only objects with several are reconstructed, each in
    its own box. The same pixels as ``h_maxima`` on the whole image (test), about 2x faster on a
    window of a million pixels (one reconstruction sorts every pixel); a patch-sized image (under
    :data:`WHOLE_IMAGE_PX` pixels) is reconstructed whole, which is faster there.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    if dist.size < WHOLE_IMAGE_PX:
        return h_maxima(dist, h).astype(bool) & (dist >= h)
    eight = np.ones((3, 3))
    objects, n = ndi.label(mask, structure=eight)
    if n == 0:
        return np.zeros(dist.shape, bool)
    plateau = (dist == ndi.maximum_filter(dist, footprint=eight)) & mask
    tops, _ = ndi.label(plateau, structure=eight)
    ids = np.arange(1, n + 1)
    top_value = np.asarray(ndi.maximum(dist, objects, ids))
    # distinct local-maximum plateaus per object: at least one (its top)
    pairs = np.unique(np.c_[objects[plateau], tops[plateau]], axis=0)
    several = np.bincount(pairs[:, 0], minlength=n + 1)[1:] > 1
    peaks = plateau & (dist == top_value[np.maximum(objects, 1) - 1]) & ~several[np.maximum(objects, 1) - 1]
    boxes = ndi.find_objects(objects)
    for i in ids[several]:
        ys = slice(max(boxes[i - 1][0].start - 1, 0), boxes[i - 1][0].stop + 1)
        xs = slice(max(boxes[i - 1][1].start - 1, 0), boxes[i - 1][1].stop + 1)
        peaks[ys, xs] |= h_maxima(dist[ys, xs], h).astype(bool) & (objects[ys, xs] == i)
    return peaks & (dist >= h)


def segment_nuclei(
    rgb: np.ndarray, um_per_px: float, *, block: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label image of the nuclei of an RGB patch in [0, 1], its haematoxylin channel and tissue mask.

    Parameters
    ----------
    rgb
        (H, W, 3) floats in [0, 1].
    um_per_px
        Micrometres per pixel of ``rgb``.
    block
        Threshold each square of this many pixels by its own tissue (:func:`local_cut`), as a patch
        of that size segmented alone is; default one threshold for the whole image.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    od = optical_density(rgb)
    h = ndi.gaussian_filter(haematoxylin(rgb, od=od), sigma=max(0.5, 0.5 / um_per_px))
    sat = saturation(rgb)
    tissue = tissue_mask(rgb, sat=sat, od=od)
    if tissue.mean() < 0.01:
        return np.zeros(h.shape, np.int32), h, tissue
    cut = otsu_cut(h[tissue]) if block is None else local_cut(h, tissue, block)
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
    peaks = nuclear_maxima(dist, 0.5 / um_per_px, mask) & (dist >= 0.8 / um_per_px)
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


def nucleus_table(
    labels: np.ndarray, h: np.ndarray, um_per_px: float, *, within: tuple[float, float, float, float] | None = None
) -> dict[str, np.ndarray]:
    """Per nucleus: area (um^2), eccentricity, solidity, mean haematoxylin, centroid (um); size-filtered.

    The values of ``skimage.measure.regionprops`` (to rounding), from pixel sums per label:
    eccentricity from the second central moments, solidity from :func:`convex_area`. ``within``:
    keep only the nuclei whose centroid (pixel index + 0.5) lies in ``[x0, x1) x [y0, y1)``.
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
    area = px * um_per_px**2
    keep = (area >= MIN_AREA_UM2) & (area <= MAX_AREA_UM2)
    if within is not None:
        x0, y0, x1, y1 = within
        keep &= (cx + 0.5 >= x0) & (cx + 0.5 < x1) & (cy + 0.5 >= y0) & (cy + 0.5 < y1)
    m20 = per_label(y * y)[ids] / px - cy**2
    m02 = per_label(x * x)[ids] / px - cx**2
    m11 = per_label(y * x)[ids] / px - cy * cx
    half, root = (m20 + m02) / 2, np.sqrt(((m20 - m02) / 2) ** 2 + m11**2)
    major, minor = np.clip(half + root, 0, None), np.clip(half - root, 0, None)
    eccentricity = np.sqrt(1 - minor / np.where(major > 0, major, 1.0)) * (major > 0)
    boxes = ndi.find_objects(labels)
    convex = np.array([convex_area(labels[boxes[i]] == i + 1) for i in ids[keep]])
    return {
        "area": area[keep],
        "eccentricity": eccentricity[keep],
        "solidity": px[keep] / convex if len(convex) else np.zeros(0),
        "h": (per_label(h.ravel())[ids] / px)[keep],
        "y": cy[keep] * um_per_px,
        "x": cx[keep] * um_per_px,
    }


def block_map(values: np.ndarray, shape: tuple[int, ...], block: int) -> np.ndarray:
    """Per-square values (one per ``block``-pixel square) interpolated bilinearly to an image of ``shape``."""
    import torch.nn.functional as F

    ny, nx = values.shape
    up = F.interpolate(
        torch.as_tensor(values, dtype=torch.float64)[None, None],
        size=(ny * block, nx * block),
        mode="bilinear",
        align_corners=False,
    )
    return up[0, 0, : shape[0], : shape[1]].numpy()


def block_max(h: np.ndarray, block: int) -> np.ndarray:
    """The maximum of each ``block``-pixel square of ``h``, interpolated between squares (:func:`block_map`)."""
    ny, nx = -(-h.shape[0] // block), -(-h.shape[1] // block)
    padded = np.zeros((ny * block, nx * block))
    padded[: h.shape[0], : h.shape[1]] = h
    return block_map(padded.reshape(ny, block, nx, block).max(axis=(1, 3)), h.shape, block)


#: Morphology labels of single nuclei, in the order they are tested (a nucleus takes the first that fits).
LABELS = ("small_round_dark", "elongated", "large", "other")


def morphology_labels(nuc: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each nucleus's morphology class (:data:`LABELS`), with the thresholds of the per-patch shares.

    "Dark" is at or above the median haematoxylin of the nuclei given (a region's, here).
    """
    area, ecc, h = (np.asarray(nuc[k]) for k in ("area", "eccentricity", "h"))
    dark = h >= np.median(h) if len(h) else np.zeros(0, bool)
    conditions = [(area < SMALL_UM2) & (ecc < ROUND_ECC) & dark, ecc > ELONGATED_ECC, area > LARGE_UM2]
    return np.select(conditions, list(LABELS[:3]), default=LABELS[3]).astype(object)


def lbp_codes(h: np.ndarray, *, top: np.ndarray | None = None) -> np.ndarray:
    """Uniform local-binary-pattern codes (P=8, R=1: 10 values) of a haematoxylin image scaled to 8 bits.

    The scale is the image's maximum, or ``top`` per pixel (:func:`block_max`: each square's, as a
    patch of that size scaled alone is).
    """
    from skimage.feature import local_binary_pattern

    scale = max(float(h.max()), 1e-6) if top is None else np.clip(top, 1e-6, None)
    grey = np.clip(h / scale * 255, 0, 255).astype(np.uint8)
    return local_binary_pattern(grey, P=8, R=1, method="uniform").astype(np.int64)


def patch_features(
    nuc: Mapping[str, np.ndarray],
    *,
    n_px: int,
    tissue_px: float,
    nuclear_px: float,
    lbp_counts: np.ndarray,
    um_per_px: float,
    nn_um: np.ndarray | None = None,
) -> np.ndarray:
    """The :data:`MORPHOMETRY` features and 10 LBP bins of one patch from its nuclei and pixel counts.

    Parameters
    ----------
    nuc
        The patch's nuclei (:func:`nucleus_table`).
    n_px, tissue_px, nuclear_px
        The patch's pixels, its tissue pixels and its pixels inside a nucleus.
    lbp_counts
        Pixels per uniform LBP code (10 values).
    um_per_px
        Micrometres per pixel.
    nn_um
        Each nucleus's distance to its nearest neighbour, when measured beyond the patch; default
        the nearest neighbour within the patch.
    """
    from scipy.spatial import cKDTree

    n = len(nuc["area"])
    tissue_fraction = tissue_px / n_px
    tissue_mm2 = max(float(tissue_px) * um_per_px**2 / 1e6, 1e-6)
    # every feature on a unit scale (raw features go straight into the paper's MLP): counts in
    # hundreds, density in 10,000 per mm^2, areas in 100 um^2, distances in 10 um
    feats = [n / 100.0, (n / tissue_mm2 if tissue_fraction >= 0.01 else 0.0) / 1e4]
    if n:  # one quantile call for the four measures: the same values as four
        q = np.quantile(np.c_[nuc["area"], nuc["eccentricity"], nuc["solidity"], nuc["h"]], QUANTILES, axis=0)
        q[:, 0] /= 100.0
        feats += list(q.T.ravel())
    else:
        feats += [0.0] * (4 * len(QUANTILES))
    if n >= 2:
        if nn_um is None:
            d, _ = cKDTree(np.c_[nuc["x"], nuc["y"]]).query(np.c_[nuc["x"], nuc["y"]], k=2)
            nn_um = d[:, 1]
        feats += [v / 10.0 for v in np.quantile(nn_um, (0.1, 0.5))]
    else:
        side = np.sqrt(n_px) * um_per_px / 10.0
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
    feats += [nuclear_px / n_px, tissue_fraction]
    return np.asarray(feats + list(np.asarray(lbp_counts[:10], dtype=float) / n_px), dtype=np.float32)


def measure_patch(rgb: np.ndarray, um_per_px: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One RGB patch in [0, 1] (H, W, 3): its :data:`MORPHOMETRY` features and 10 LBP bins, and its nuclei."""
    labels, h, tissue = segment_nuclei(rgb, um_per_px)
    nuc = nucleus_table(labels, h, um_per_px)
    feats = patch_features(
        nuc,
        n_px=labels.size,
        tissue_px=float(tissue.sum()),
        nuclear_px=float((labels > 0).sum()),
        lbp_counts=np.bincount(lbp_codes(h).ravel(), minlength=10),
        um_per_px=um_per_px,
    )
    return feats, nuc


def morphometry(rgb: np.ndarray, um_per_px: float) -> np.ndarray:
    """The :data:`MORPHOMETRY` features and 10 LBP bins of one RGB patch in [0, 1] (H, W, 3)."""
    return measure_patch(rgb, um_per_px)[0]
