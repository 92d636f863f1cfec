"""Fit time and peak memory of the prototype estimators on the real reference over the HER2ST genes.

Run: CPNN_DATA_DIR=../shared/data python benchmarks/prototypes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, table

import cpnn as cp


def main() -> None:
    cp.settings.verbosity = 0
    target = cp.datasets.her2st(images=False)["table"]
    ref = cp.datasets.wu2021_cid4465()
    rows = []
    for method in ("nb", "mean"):
        t = target.copy()
        with Peak() as p:
            cp.pp.build_prototypes(t, ref, cell_type_key="celltype_major", method=method)
        info = t.uns["cpnn"]["prototypes"]
        rows.append(
            {
                "method": method,
                "cells": info["n_cells_after_qc"],
                "genes": info["n_genes"],
                "types": len(t.uns["cpnn"]["cell_types"]),
                "iterations": info.get("n_iter", "-"),
                "seconds": p.seconds,
                "peak MiB above start": p.added,
            }
        )
    print(table(rows))


if __name__ == "__main__":
    main()
