"""The nuclei encoder over a whole region: segment the tissue once, measure every patch from the nucleus table.

Overlapping patches (dense tiles, Visium HD bins, Visium's 112 um patches at 100 um pitch) would
segment the same nuclei many times. Here the plane is cut into square cells of :data:`CELL_PX`
pixels at the encoder's scale; each cell that a patch reaches is read once, with a margin of
:data:`MARGIN_UM` so that nuclei near its edge are whole, and segmented; a nucleus belongs to the
cell its centroid lies in, so a nucleus cut by a window edge is counted once. A patch's
features then come from the nuclei whose centroid lies in its box (nearest-neighbour distances
measured over the whole region) and from summed-area tables of its cell's tissue mask, nuclear
mask and LBP codes: the definitions of :func:`cpnn.models.encoders._nuclei.patch_features`, with
four differences from segmenting each patch alone: the Otsu threshold and the LBP codes' 8-bit
scale are each patch-sized square's, interpolated between squares (a patch alone has its own);
nuclei cut by the patch edge count whole, by centroid; nearest neighbours may lie beyond the patch.

Sparse patches (ST's 112 um patches at 200 um pitch) would segment more glass and stroma between
spots than the patches hold; there each patch is segmented alone, as ``forward`` does.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ...data._windows import RegionReader
from ._nuclei import (
    ELONGATED_ECC,
    LARGE_UM2,
    MORPHOMETRY,
    QUANTILES,
    ROUND_ECC,
    SMALL_UM2,
    block_max,
    lbp_codes,
    measure_patch,
    nucleus_table,
    segment_nuclei,
)

#: Side of a segmentation cell, in pixels at the encoder's scale (384 um at 0.5 um per pixel): small enough to
#: keep two threads busy on a few hundred tiles, large enough that the margins add a quarter.
CELL_PX = 768
#: How far a nucleus reaches beyond its centroid: the margin read around each cell.
MARGIN_UM = 24.0
#: Columns of the nucleus table (x, y in image pixels; the rest as :func:`nucleus_table` measures them).
NUCLEUS_COLUMNS = ("x", "y", "area", "eccentricity", "solidity", "h")
#: Nuclear features per spot: the morphometry and 10 LBP bins.
N_FEATURES = len(MORPHOMETRY) + 10
#: How a region is segmented: ``"auto"`` (once where that reads fewer pixels), ``"once"`` or ``"patch"``.
SEGMENT_MODES = ("auto", "once", "patch")


@dataclass
class Cell:
    """One segmentation cell: the image box read and the part of the plane it measures."""

    box: tuple[int, int, int, int]  # image pixels read (x0, y0, x1, y1): the owned box and a margin
    owned: np.ndarray  # encoder-scale box (x0, y0, x1, y1): its nuclei (by centroid) and its pixels
    spots: np.ndarray  # positions (in the region) of the spots whose patch reaches into the owned box


def plan_cells(reader: RegionReader, um_per_px: float, *, cell_px: int = CELL_PX) -> list[Cell]:
    """The cells that the region's patches reach, each owning the part of its square that patches cover."""
    s, p = reader.scale, reader.patch_px
    lo = reader.corners * s  # patch boxes at the encoder's scale: [lo, lo + p)
    origin = lo.min(0)
    first = np.floor((lo - origin) / cell_px).astype(np.int64)
    last = np.floor((lo + p - 1e-9 - origin) / cell_px).astype(np.int64)
    reach: dict[tuple[int, int], list[int]] = {}  # cell -> spots whose box reaches into it
    for k in range(len(lo)):
        for i in range(first[k, 0], last[k, 0] + 1):
            for j in range(first[k, 1], last[k, 1] + 1):
                reach.setdefault((i, j), []).append(k)
    margin = MARGIN_UM / um_per_px
    cells = []
    for (i, j), ks in sorted(reach.items()):
        c0 = origin + np.array([i, j]) * cell_px
        owned0 = np.maximum(lo[ks].min(0), c0)  # the part of the square that patches cover (bounding box)
        owned1 = np.minimum(lo[ks].max(0) + p, c0 + cell_px)
        x0, y0 = np.floor((owned0 - margin) / s).astype(int)
        x1, y1 = np.ceil((owned1 + margin) / s).astype(int)
        cells.append(Cell((int(x0), int(y0), int(x1), int(y1)), np.r_[owned0, owned1], np.asarray(ks)))
    return cells


def _summed(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of ``mask`` with a leading zero row and column."""
    out = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=out[1:, 1:])
    return out


def _measure_cell(
    reader: RegionReader, cell: Cell, um_per_px: float
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Segment one cell: its nuclei, and the pixel counts of the part of each reaching patch it owns.

    Returns the nuclei (x, y at the encoder's scale), per spot of ``cell.spots`` the tissue,
    nuclear and 10 LBP-code pixel counts of its patch box clipped to the owned box, and the
    clipped box's size in pixels.
    """
    s, p = reader.scale, reader.patch_px
    x0, y0, x1, y1 = cell.box
    rgb = reader.read(x0, y0, x1, y1)
    labels, h, tissue = segment_nuclei(rgb, um_per_px, block=p)
    origin = np.array([x0 * s, y0 * s])  # the window's origin at the encoder's scale
    # continuous coordinates: pixel i covers [i, i + 1), so a nucleus centred on pixel index c lies at c + 0.5
    owned = cell.owned - np.r_[origin, origin]
    nuc = nucleus_table(labels, h, um_per_px, within=tuple(owned))
    nuc["x"] = nuc["x"] / um_per_px + origin[0] + 0.5
    nuc["y"] = nuc["y"] / um_per_px + origin[1] + 0.5
    # pixel counts over the owned part of the window only, each spot's patch box clipped to it
    shape = np.array([labels.shape[1], labels.shape[0]])
    o0 = np.round(owned[:2]).astype(np.int64).clip(0, shape)
    o1 = np.round(owned[2:]).astype(np.int64).clip(0, shape)
    lo = np.round(reader.corners[cell.spots] * s - origin).astype(np.int64)
    b0, b1 = lo.clip(o0, o1) - o0, (lo + p).clip(o0, o1) - o0
    area = np.prod(b1 - b0, axis=1).astype(float)
    crop = (slice(o0[1], o1[1]), slice(o0[0], o1[0]))
    top = block_max(h, p)
    pad = (slice(max(o0[1] - 1, 0), o1[1] + 1), slice(max(o0[0] - 1, 0), o1[0] + 1))  # LBP reads 1 px around
    codes = lbp_codes(h[pad], top=top[pad])
    codes = codes[o0[1] - pad[0].start :, o0[0] - pad[1].start :][: o1[1] - o0[1], : o1[0] - o0[0]]

    def sums(mask: np.ndarray) -> np.ndarray:
        t = _summed(mask)
        return t[b1[:, 1], b1[:, 0]] - t[b0[:, 1], b1[:, 0]] - t[b1[:, 1], b0[:, 0]] + t[b0[:, 1], b0[:, 0]]

    counts = [sums(tissue[crop]), sums(labels[crop] > 0), *(sums(codes == b) for b in range(10))]
    return {k: nuc[k] for k in NUCLEUS_COLUMNS}, np.stack(counts, axis=1).astype(float), area


def _threads() -> int:
    """Threads for segmenting: cpnn's thread policy (torch's threads inside a cpnn call), at most a core each."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _group_sorted(values: np.ndarray, group: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` sorted within each group (groups in order) and each group's first position."""
    return values[np.lexsort((values, group))], np.cumsum(n) - n


def _group_quantiles(v: np.ndarray, start: np.ndarray, n: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """``np.quantile`` of every group of sorted values ``v`` (:func:`_group_sorted`) at ``qs`` (0 for empty groups).

    The linear method, interpolated as numpy interpolates (from the nearer side).
    """
    out = np.zeros((len(n), len(qs)))
    has = n > 0
    for i, q in enumerate(qs):
        pos = q * (n[has] - 1)
        below = np.floor(pos).astype(np.int64)
        above = np.minimum(below + 1, n[has] - 1)
        t = pos - below
        a, b = v[start[has] + below], v[start[has] + above]
        diff = b - a
        out[has, i] = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    return out


def _group_median(v: np.ndarray, start: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``np.median`` of every group of sorted values ``v`` (the mean of the two middle values for an even count)."""
    out = np.zeros(len(n))
    has = n > 0
    a = v[start[has] + (n[has] - 1) // 2]
    b = v[start[has] + n[has] // 2]
    out[has] = np.where(n[has] % 2, a, (a + b) / 2)
    return out


def grouped_features(
    nuc: dict[str, np.ndarray],
    nn_um: np.ndarray,
    spot: np.ndarray,
    *,
    n_px: np.ndarray,
    counts: np.ndarray,
    um_per_px: float,
) -> np.ndarray:
    """:func:`cpnn.models.encoders._nuclei.patch_features` for many spots at once, from (spot, nucleus) pairs.

    ``nuc``, ``nn_um``: per pair the nucleus's measures and nearest-neighbour distance; ``spot``: per
    pair the spot (0 to ``len(n_px) - 1``); ``counts``: per spot the tissue, nuclear and 10
    LBP-code pixel counts. The same values as calling ``patch_features`` per spot (test).
    """
    m = len(n_px)
    n = np.bincount(spot, minlength=m)
    tissue_fraction = counts[:, 0] / n_px
    tissue_mm2 = np.maximum(counts[:, 0] * um_per_px**2 / 1e6, 1e-6)
    out = np.zeros((m, N_FEATURES))
    out[:, 0] = n / 100.0
    out[:, 1] = np.where(tissue_fraction >= 0.01, n / tissue_mm2, 0.0) / 1e4
    column = 2
    ranked = {key: _group_sorted(nuc[key], spot, n) for key in ("area", "eccentricity", "solidity", "h")}
    for key, scale in (("area", 100.0), ("eccentricity", 1.0), ("solidity", 1.0), ("h", 1.0)):
        out[:, column : column + 3] = _group_quantiles(*ranked[key], n, QUANTILES) / scale
        column += 3
    side = np.sqrt(n_px) * um_per_px / 10.0
    nn = _group_quantiles(*_group_sorted(nn_um, spot, n), n, (0.1, 0.5)) / 10.0
    out[:, column : column + 2] = np.where((n >= 2)[:, None], nn, side[:, None])
    column += 2
    dark = nuc["h"] >= _group_median(*ranked["h"], n)[spot]  # the same sort as h's quantiles
    shares = (
        (nuc["area"] < SMALL_UM2) & (nuc["eccentricity"] < ROUND_ECC) & dark,
        nuc["eccentricity"] > ELONGATED_ECC,
        nuc["area"] > LARGE_UM2,
    )
    for share in shares:
        out[:, column] = np.bincount(spot, weights=share.astype(float), minlength=m) / np.maximum(n, 1)
        column += 1
    out[:, column] = counts[:, 1] / n_px
    out[:, column + 1] = tissue_fraction
    out[:, column + 2 :] = counts[:, 2:12] / n_px[:, None]
    return out.astype(np.float32)


def segment_once(
    reader: RegionReader, um_per_px: float, cells: list[Cell] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every spot's nuclear features from one segmentation of the cells its patches reach, and the nuclei.

    ``cells``: :func:`plan_cells`' plan, when already made. Returns the features (spots x :data:`N_FEATURES`, the region's spot order) and the nucleus table (x, y in
    image pixels, area in um^2, eccentricity, solidity, mean haematoxylin).
    """
    from scipy.spatial import cKDTree

    s, p = reader.scale, reader.patch_px
    cells = plan_cells(reader, um_per_px) if cells is None else cells
    with ThreadPoolExecutor(_threads()) as pool:
        measured = list(pool.map(lambda c: _measure_cell(reader, c, um_per_px), cells))
    nuclei = {k: np.concatenate([m[0][k] for m in measured]) for k in NUCLEUS_COLUMNS}
    counts, n_px = np.zeros((len(reader.corners), 12)), np.zeros(len(reader.corners))
    for cell, (_, c, area) in zip(cells, measured, strict=True):
        np.add.at(counts, cell.spots, c)
        np.add.at(n_px, cell.spots, area)
    xy = np.c_[nuclei["x"], nuclei["y"]]
    nn_um = np.zeros(len(xy))
    if len(xy) >= 2:
        d, _ = cKDTree(xy).query(xy, k=2)
        nn_um = d[:, 1] * um_per_px
    lo = reader.corners * s
    tree = cKDTree(xy) if len(xy) else None
    feats = np.zeros((len(lo), N_FEATURES), dtype=np.float32)
    for start in range(0, len(lo), 4096):  # the candidate lists of a chunk of spots at a time
        stop = min(start + 4096, len(lo))
        near = tree.query_ball_point(lo[start:stop] + p / 2.0, r=p / 2.0, p=np.inf) if tree else [[]] * (stop - start)
        spot = np.repeat(np.arange(start, stop), [len(c) for c in near])
        idx = np.fromiter((j for c in near for j in c), dtype=np.int64, count=len(spot))
        inside = (xy[idx] >= lo[spot]).all(1) & (xy[idx] < lo[spot] + p).all(1)
        spot, idx = spot[inside] - start, idx[inside]
        feats[start:stop] = grouped_features(
            {key: nuclei[key][idx] for key in ("area", "eccentricity", "solidity", "h")},
            nn_um[idx],
            spot,
            n_px=np.maximum(n_px[start:stop], 1.0),
            counts=counts[start:stop],
            um_per_px=um_per_px,
        )
    nuclei["x"], nuclei["y"] = nuclei["x"] / s, nuclei["y"] / s
    return feats, nuclei


def segment_patches(reader: RegionReader, um_per_px: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every spot's features from its own patch (``forward``'s values), and each nucleus once.

    A nucleus found in several overlapping patches is kept from the patch whose centre is nearest.
    """
    from scipy.spatial import cKDTree

    s, size = reader.scale, reader.patch_native
    corners = reader.corners

    def one(k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x0, y0 = (int(v) for v in corners[k])
        return measure_patch(reader.read(x0, y0, x0 + size, y0 + size), um_per_px)

    with ThreadPoolExecutor(_threads()) as pool:
        measured = list(pool.map(one, range(len(corners))))
    feats = np.stack([m[0] for m in measured]) if measured else np.zeros((0, N_FEATURES), np.float32)
    parts = []
    for k, (_, nuc) in enumerate(measured):
        part = {key: nuc[key] for key in NUCLEUS_COLUMNS}
        part["x"] = corners[k, 0] + (nuc["x"] / um_per_px + 0.5) / s  # patch pixel index -> image coordinates
        part["y"] = corners[k, 1] + (nuc["y"] / um_per_px + 0.5) / s
        part["spot"] = np.full(len(nuc["x"]), k)
        parts.append(part)
    nuclei = {k: np.concatenate([q[k] for q in parts]) if parts else np.zeros(0) for k in (*NUCLEUS_COLUMNS, "spot")}
    if len(nuclei["x"]) and len(corners) > 1:
        _, nearest = cKDTree(reader.region.centers_px).query(np.c_[nuclei["x"], nuclei["y"]])
        once = nearest == nuclei["spot"]
        nuclei = {k: v[once] for k, v in nuclei.items()}
    nuclei.pop("spot")
    return feats, nuclei


def pixels_read(reader: RegionReader, cells: list[Cell]) -> tuple[int, int]:
    """Pixels (at the encoder's scale) segmenting ``cells`` once reads, and segmenting every patch alone reads."""
    s = reader.scale
    once = sum(round((c.box[2] - c.box[0]) * s) * round((c.box[3] - c.box[1]) * s) for c in cells)
    return once, len(reader.corners) * reader.patch_px**2


def region_nuclei(
    reader: RegionReader, um_per_px: float, *, segment: str = "auto"
) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """Nuclear features of a region's spots and its nuclei, segmenting once or per patch, whichever reads less.

    Returns the features (spots x :data:`N_FEATURES`), the nucleus table (x, y in image pixels) and the mode used.
    """
    if not len(reader.corners):
        return np.zeros((0, N_FEATURES), np.float32), {k: np.zeros(0) for k in NUCLEUS_COLUMNS}, segment
    cells = plan_cells(reader, um_per_px) if segment != "patch" else []
    if segment == "auto":
        once, alone = pixels_read(reader, cells)
        segment = "once" if once < alone else "patch"
    if segment == "once":
        feats, nuclei = segment_once(reader, um_per_px, cells)
    else:
        feats, nuclei = segment_patches(reader, um_per_px)
    return feats, nuclei, segment
