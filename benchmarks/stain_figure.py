"""What Macenko stain normalisation does to HER2ST patches: one patient B and two patient C sections, before and after.

Run (about 1 minute):
    CPNN_DATA_DIR=../shared/data python benchmarks/stain_figure.py --out docs/stain_normalisation.jpg

Each section's stain is estimated from a thumbnail of its whole image (as ``encoder_kwargs={"stain":
"macenko"}`` does), then four 112 um patches under its spots are drawn as they are (top row) and
mapped onto the usual Macenko reference (bottom row). Prints each section's estimated stain
vectors and 99th-percentile intensities.
"""

from __future__ import annotations

import argparse

import matplotlib.pyplot as plt
import numpy as np
import torch

import cpnn as cp
from cpnn.data import region_images
from cpnn.data._stain import REFERENCE_STAIN, Stain, estimate_stain, normalise_patches, thumbnail

SECTIONS = ("B4", "C2", "C5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/stain_normalisation.jpg")
    args = ap.parse_args()
    cp.settings.verbosity = 0
    sdata = cp.datasets.her2st(list(SECTIONS))
    adata = sdata["table"]
    reference = Stain.from_config(REFERENCE_STAIN)
    regions = region_images(sdata, adata, np.ones(adata.n_obs, bool))
    fig, axes = plt.subplots(2, 4 * len(regions), figsize=(2.0 * len(regions) * 2, 2.2), dpi=150)
    rng = np.random.default_rng(0)
    for k, r in enumerate(regions):
        stain = estimate_stain(thumbnail(r.array, r.scale))
        print(
            f"{r.region}: stain vectors (H, E) {np.round(stain.matrix.T, 3).tolist()}, "
            f"99th-percentile intensities {np.round(stain.max_concentration, 2).tolist()}"
        )
        size = round(112 / r.um_per_px)
        for j, s in enumerate(rng.choice(len(r.centers_px), 4, replace=False)):
            x, y = (r.centers_px[s] - size / 2).astype(int)
            patch = np.asarray(r.array[:3, y : y + size, x : x + size], dtype=np.float32) / r.scale
            after = normalise_patches(torch.as_tensor(patch[None]), stain, reference)[0].numpy()
            for row, img in enumerate((patch, after)):
                ax = axes[row, 4 * k + j]
                ax.imshow(np.moveaxis(img, 0, -1).clip(0, 1))
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_title(r.region.removesuffix("_spots") if row == 0 else "", fontsize=8, loc="left")
        axes[0, 0].set_ylabel("as scanned", fontsize=7)
        axes[1, 0].set_ylabel("Macenko", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(args.out, dpi=110, pil_kwargs={"quality": 85})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
