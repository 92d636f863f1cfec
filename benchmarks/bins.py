"""Visium HD scale: embedding 200,000 square bins, and summing them into pseudo-spots.

Run (about 5 minutes on 2 CPU cores):
    python benchmarks/bins.py
    python benchmarks/bins.py --bins 20000      # quick

A synthetic H&E-coloured tissue at 0.5 um/px (computed window by window, never whole) under a
square grid of 8 um bins, as spatialdata-io's ``visium_hd`` reader lays them out (square polygons,
a ``square_008um`` table with a sparse count matrix). Prints bins/s and the peak resident memory
added by ``cp.pp.embed`` (hand-crafted encoder, 32 um patches at 32 px: the patches are read one
block at a time, so memory must not grow with the number of bins) and by ``cp.pp.aggregate_bins``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, table
from tiling import tissue

import cpnn as cp

MPP, BIN_UM = 0.5, 8.0


def visium_hd(n_bins: int, n_genes: int = 50, seed: int = 0):
    import anndata as ad
    import pandas as pd
    import shapely
    import spatialdata as sd
    from geopandas import GeoDataFrame
    from scipy import sparse
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    side_bins = int(np.ceil(np.sqrt(n_bins)))
    side_px = BIN_UM / MPP
    size = int(side_bins * side_px + 2 * 112 / MPP)  # a margin of glass for the patches at the edge
    image = Image2DModel.parse(tissue(size), dims=("c", "y", "x"), scale_factors=[2, 2, 2])
    k = np.arange(n_bins)
    x0 = 112 / MPP + (k % side_bins) * side_px
    y0 = 112 / MPP + (k // side_bins) * side_px
    geo = GeoDataFrame(geometry=shapely.box(x0, y0, x0 + side_px, y0 + side_px), index=k)
    shapes = ShapesModel.parse(geo)
    rng = np.random.default_rng(seed)
    X = sparse.random(n_bins, n_genes, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.ceil(X.data * 5)
    obs = pd.DataFrame({"region": "hd_square_008um", "location_id": k}, index=[f"b{i}" for i in k])
    obs["region"] = obs["region"].astype("category")
    a = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    table = TableModel.parse(a, region="hd_square_008um", region_key="region", instance_key="location_id")
    return sd.SpatialData(
        images={"hd_full_image": image}, shapes={"hd_square_008um": shapes}, tables={"square_008um": table}
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bins", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    with Peak() as build:
        sdata = visium_hd(args.bins)
    print(f"built {args.bins} bins in {build.seconds:.0f} s", flush=True)
    rows = []
    with Peak() as p:
        cp.pp.embed(
            sdata, table_key="square_008um", encoder="handcrafted", patch_size_um=32, patch_px=32,
            num_workers=args.workers,
        )  # fmt: skip
    z = sdata["square_008um"].obsm["cpnn_embedding"]
    assert np.isfinite(z).all() and z.shape[0] == args.bins
    rows.append({"step": "cp.pp.embed (hand-crafted, 32 um patches)", "bins": args.bins, "seconds": p.seconds,
                 "bins/s": args.bins / p.seconds, "peak MiB added": p.added})  # fmt: skip
    with Peak() as p:
        key = cp.pp.aggregate_bins(sdata, bin_size_um=56)
    rows.append({"step": f"cp.pp.aggregate_bins 8 -> 56 um ({sdata[key].n_obs} pseudo-spots)", "bins": args.bins,
                 "seconds": p.seconds, "bins/s": args.bins / p.seconds, "peak MiB added": p.added})  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
