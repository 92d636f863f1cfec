"""The nuclei encoder's points element drawn by spatialdata-plot over B4's H&E (docs/nuclei_points.jpg).

Run (about half a minute):
    CPNN_DATA_DIR=../shared/data python benchmarks/nuclei_points.py --out docs/nuclei_points.jpg

``cp.pp.tile(tile_size_um=16)`` on B4, ``cp.pp.embed(encoder="nuclei")`` on 100 neighbouring tiles in
the middle of the tissue (their 112 um patches overlap, so the tissue is segmented once), then
``sdata.pl.render_images().pl.render_points(color="label")`` on a 250 um square around them: what a
user sees in spatialdata-plot or napari-spatialdata.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import spatialdata_plot  # noqa: F401  (registers sdata.pl)
from spatialdata import bounding_box_query
from spatialdata.transformations import get_transformation

import cpnn as cp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/nuclei_points.jpg")
    args = ap.parse_args()
    cp.settings.progress_bar = False
    sdata = cp.datasets.her2st(sections=["B4"])
    cp.pp.tile(sdata, tile_size_um=16)
    tiles = sdata["cpnn_tiles"]
    rc = tiles.obs[["row", "col"]].to_numpy()
    mask = np.zeros(tiles.n_obs, bool)
    mask[np.argsort(np.abs(rc - np.median(rc, 0)).max(1), kind="stable")[:100]] = True
    cp.pp.embed(sdata, encoder="nuclei", table_key="cpnn_tiles", spots=mask)
    name = "cpnn_nuclei_cpnn_tiles_B4_image"
    points = sdata.points[name].compute()
    um_per_px = float(sdata["cpnn_tiles"].uns["cpnn_spatial"]["um_per_px"]["cpnn_tiles_B4_image"])
    # a 250 um square in the middle of the nuclei, in B4's coordinate system
    affine = get_transformation(sdata.points[name], to_coordinate_system="B4").to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")
    )
    cx, cy = affine[:2, :2] @ np.median(points[["x", "y"]].to_numpy(), 0) + affine[:2, 2]
    half = 125.0 / um_per_px * float(np.sqrt(abs(np.linalg.det(affine[:2, :2]))))
    view = bounding_box_query(
        sdata.subset(["B4_image", name], filter_tables=False),
        axes=("x", "y"),
        min_coordinate=[cx - half, cy - half],
        max_coordinate=[cx + half, cy + half],
        target_coordinate_system="B4",
    )
    fig, ax = plt.subplots(figsize=(7, 6))
    labels = ["small_round_dark", "elongated", "large", "other"]
    view.pl.render_images("B4_image").pl.render_points(
        name, color="label", groups=labels, palette=["#e6194b", "#ffe119", "#f58231", "#3cb44b"], size=8
    ).pl.show(
        coordinate_systems="B4",
        ax=ax,
        title=f"{len(view.points[name])} nuclei in 250 um of B4 (cp.pp.embed, encoder='nuclei')",
    )
    ax.set_xlabel("")
    ax.set_ylabel("")
    fig.savefig(Path(args.out), dpi=110, bbox_inches="tight", pil_kwargs={"quality": 85})
    counts = points["label"].value_counts()
    print(f"{len(points)} nuclei under 100 tiles' patches; labels: {counts.to_dict()}; figure: {args.out}")


if __name__ == "__main__":
    main()
