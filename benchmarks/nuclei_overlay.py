"""Detected nuclei drawn over real HER2ST patches: tumour, stroma, lymphocyte-rich, fat (docs/nuclei_overlays.png).

Run (about a minute):
    CPNN_DATA_DIR=../shared/data python benchmarks/nuclei_overlay.py --out docs/nuclei_overlays.png

The patches are the 112 um squares that ``encoder="nuclei"`` reads, at its 0.5 um per pixel. Each kind
is the imaged spot where the authors' stereoscope proportions (never used by the detector) are most
epithelial, most CAF, most lymphocyte (T + B cells), and the spot with the least tissue (fat). The
title gives the count and the morphometry shares the encoder reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from skimage.segmentation import find_boundaries
from skimage.transform import resize

import cpnn as cp
from cpnn.models.encoders._nuclei import MORPHOMETRY, NUCLEI_UM_PER_PX, morphometry, segment_nuclei, tissue_mask

PATCH_UM = 112.0


def patch(sdata, section: str, xy: np.ndarray, um_per_px: float) -> np.ndarray:
    """The 112 um square around ``xy`` (full-resolution pixels), resampled to 0.5 um per pixel, RGB in [0, 1]."""
    img = sdata.images[f"{section}_image"]
    level0 = img["scale0"]["image"] if hasattr(img, "keys") else img
    half = round(PATCH_UM / um_per_px / 2)
    x, y = (round(v) for v in xy)
    crop = np.asarray(level0[:, y - half : y + half, x - half : x + half].values).transpose(1, 2, 0)[..., :3] / 255.0
    side = round(PATCH_UM / NUCLEI_UM_PER_PX)
    return resize(crop, (side, side), order=1, anti_aliasing=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/nuclei_overlays.png")
    args = ap.parse_args()
    cp.settings.progress_bar = False
    sdata = cp.datasets.her2st()
    table = sdata["table"]
    stereo = cp.datasets.her2st_proportions("major").reindex(table.obs_names)
    ok = stereo.notna().all(1).to_numpy()
    um = table.uns["cpnn_spatial"]["um_per_px"]
    picks = {
        "tumour (most epithelial)": int(np.nanargmax(np.where(ok, stereo["Epithelial"], np.nan))),
        "stroma (most CAFs)": int(np.nanargmax(np.where(ok, stereo["CAFs"], np.nan))),
        "lymphocyte-rich (most T + B cells)": int(
            np.nanargmax(np.where(ok, stereo["T-cells"] + stereo["B-cells"], np.nan))
        ),
    }
    # fat: the imaged spot with the least tissue in its patch
    sections = table.obs["section"].astype(str).to_numpy()
    best, best_tissue = 0, np.inf
    for i in np.flatnonzero(sections == "B4"):
        region = f"{sections[i]}_spots"
        rgb = patch(sdata, sections[i], table.obsm["spatial"][i], um[region])
        t = tissue_mask(rgb).mean()
        if t < best_tissue:
            best, best_tissue = i, t
    picks["least tissue in B4 (fat, glass, a bubble)"] = best
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.8))
    for ax, (label, i) in zip(axes, picks.items(), strict=True):
        region = f"{sections[i]}_spots"
        rgb = patch(sdata, sections[i], table.obsm["spatial"][i], um[region])
        labels, _, _ = segment_nuclei(rgb, NUCLEI_UM_PER_PX)
        f = morphometry(rgb, NUCLEI_UM_PER_PX)
        shown = rgb.copy()
        shown[find_boundaries(labels, mode="outer")] = (0.0, 0.9, 0.2)
        ax.imshow(shown)
        ax.set_axis_off()
        n = round(float(f[MORPHOMETRY.index("n_nuclei")]) * 100)
        ax.set_title(
            f"{label}\n{table.obs_names[i]}: {n} nuclei; small-round-dark "
            f"{f[MORPHOMETRY.index('share_small_round_dark')]:.0%}, elongated "
            f"{f[MORPHOMETRY.index('share_elongated')]:.0%}, large {f[MORPHOMETRY.index('share_large')]:.0%}",
            fontsize=8,
        )
    fig.suptitle(
        "encoder='nuclei': detected nuclei (green outlines) on 112 um HER2ST patches at 0.5 um/px", fontsize=10
    )
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: " + ", ".join(f"{k} = {table.obs_names[v]}" for k, v in picks.items()))


if __name__ == "__main__":
    main()
