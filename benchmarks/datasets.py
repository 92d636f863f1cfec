"""Time and peak memory of loading HER2ST (first load converts the JPEGs, second reads zarr) and of reading patches.

Run: CPNN_DATA_DIR=../shared/data python benchmarks/datasets.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, table

import cpnn as cp
from cpnn.data import PatchDataset, region_images


def main() -> None:
    cp.settings.verbosity = 0
    cp.settings.cachedir = tempfile.mkdtemp(prefix="cpnn-bench-")
    import spatialdata  # noqa: F401  (import cost outside the measurements)

    rows = []
    with Peak() as first:
        sdata = cp.datasets.her2st()
    rows.append(
        {
            "step": "her2st() first load (6 sections, JPEG -> zarr)",
            "seconds": first.seconds,
            "peak MiB above start": first.added,
        }
    )
    with Peak() as second:
        sdata = cp.datasets.her2st()
    rows.append(
        {"step": "her2st() second load (zarr cache)", "seconds": second.seconds, "peak MiB above start": second.added}
    )
    adata = sdata["table"]
    regions = region_images(sdata, adata, np.ones(adata.n_obs, bool))
    ds = PatchDataset(regions, patch_size_um=112, out_px=224, block_size=64)
    with Peak() as patches:
        n = 0
        while n < 1000:
            for i in range(len(ds)):
                n += len(ds[i][0])
                if n >= 1000:
                    break
    rows.append(
        {
            "step": f"read {n} spot patches (112 um -> 224 px)",
            "seconds": patches.seconds,
            "peak MiB above start": patches.added,
        }
    )
    print(table(rows))
    print(f"\npatches/s: {n / patches.seconds:.0f}; one decoded image is ~263 MiB")


if __name__ == "__main__":
    main()
