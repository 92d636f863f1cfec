"""What a new user sees first, measured: the demo's output, the predicted layer, the tutorials' figures.

Run after the demo, with its printed output saved:
    CPNN_DATA_DIR=../shared/data cpnn demo --out cpnn-demo --force > demo.log 2>&1
    python benchmarks/first_result.py --demo cpnn-demo --log demo.log

Prints: the demo's line count; on B4, Moran's I (squidpy, 6 nearest spots) of the predicted and the
measured expression, both normalised (log1p CP10k over the panel), mean over the panel genes; the
mean per-gene Spearman of the depth-free layer and of a layer scaled by each spot's measured depth,
each correlated *raw* with the raw counts (the trap a depth-scaled layer sets); and the image
outputs of each committed tutorial.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import squidpy as sq

sys.path.insert(0, str(Path(__file__).parent))
from _util import table

from cpnn._core import columnwise_spearman, lognorm


def morans_i(values: np.ndarray, coords: np.ndarray) -> float:
    a = ad.AnnData(values.astype(np.float32))
    a.obsm["spatial"] = coords
    sq.gr.spatial_neighbors(a, coord_type="generic", n_neighs=6)
    sq.gr.spatial_autocorr(a, mode="moran", genes=list(a.var_names), n_perms=None, show_progress_bar=False)
    return float(np.nanmean(a.uns["moranI"]["I"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="cpnn-demo")
    ap.add_argument("--log", default=None, help="the demo's saved output")
    args = ap.parse_args()
    rows = []
    if args.log:
        lines = Path(args.log).read_text().splitlines()
        rows.append({"what": "cpnn demo: lines printed", "value": len(lines)})
    t = sc.read_h5ad(Path(args.demo) / "table.h5ad")
    b4 = (t.obs["section"] == "B4").to_numpy()
    genes = list(t.uns["cpnn"]["predict"]["genes"])
    cols = t.var_names.get_indexer(genes)
    counts = t.X[b4][:, cols].toarray().astype(float)
    pred = t.layers["cpnn"][b4][:, cols].toarray().astype(float)
    lib = counts.sum(1, keepdims=True)
    depth_scaled = pred / pred.sum(1, keepdims=True) * lib
    coords = np.asarray(t.obsm["spatial"])[b4]
    rows += [
        {
            "what": "Moran's I on B4, measured (log1p CP10k), mean over panel",
            "value": morans_i(lognorm(counts), coords),
        },
        {"what": "Moran's I on B4, predicted (log1p CP10k), mean over panel", "value": morans_i(lognorm(pred), coords)},
        {"what": "Moran's I on B4, a depth-scaled layer read raw", "value": morans_i(depth_scaled, coords)},
        {
            "what": "Spearman of the depth-free layer, raw vs raw counts",
            "value": float(np.nanmean(columnwise_spearman(pred, counts))),
        },
        {
            "what": "Spearman of a depth-scaled layer, raw vs raw counts",
            "value": float(np.nanmean(columnwise_spearman(depth_scaled, counts))),
        },
        {
            "what": "Spearman, both normalised (the headline's measure, pooled over B4)",
            "value": float(np.nanmean(columnwise_spearman(lognorm(pred), lognorm(counts)))),
        },
    ]
    for nb in sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        n = sum(
            any(k in o.get("data", {}) for k in ("image/png", "image/jpeg"))
            for c in cells
            for o in c.get("outputs", [])
        )
        rows.append({"what": f"image outputs in {nb.name}", "value": n})
    print(table(rows))


if __name__ == "__main__":
    main()
