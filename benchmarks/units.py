"""Units and stop rule of the deconvolution, against the HER2ST authors' stereoscope proportions.

Run (about 15 minutes on 2 CPU cores; the learned component at ``tol=1e-6`` runs to its 1,000-round cap):
    CPNN_DATA_DIR=../shared/data python benchmarks/units.py

Issue #42: ``cp.pp.deconvolve`` returned shares of counts; now it returns fractions of cells
(each type's share of the counts divided by the counts of an average cell of the type, from the
CID4465 reference). Stereoscope fits its rates per unit of a cell's library, so its proportions
lean towards shares of counts: the comparison measures the unit too. For each configuration, on every
spot of the 36 HER2ST sections (13,620 spots, CID4465 NB prototypes of ``celltype_major``): the
mean over stereoscope's 8 types of the Pearson correlation over spots and of the mean absolute
difference, the mean epithelial share, and on B4's low-tissue spots (fat and glass: tissue fraction
< 0.5 in the nuclei encoder's reading; no adipocyte in the reference) the epithelial share next to
stereoscope's. ``tol`` is the shared fit's stop rule (relative change of the likelihood a round);
"unexplained" adds the component of ``deconvolve(unexplained=...)`` (not mapped to a
stereoscope type, so the Pearson and difference columns are over the reference types).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import table
from her2st import low_tissue, to_stereoscope

import cpnn as cp
from cpnn._core import columnwise_pearson
from cpnn.datasets._her2st import HER2ST_SECTIONS

#: name -> (the obsm key read, deconvolve keywords)
CONFIGS = {
    "shares of counts, tol 1e-4 (0.3)": ("_count_shares", {"tol": 1e-4}),
    "cells, tol 1e-4": ("", {"tol": 1e-4}),
    "cells, tol 1e-6": ("", {"tol": 1e-6}),
    "cells + flat unexplained, tol 1e-6": ("", {"tol": 1e-6, "unexplained": "flat"}),
    "cells + learned unexplained, tol 1e-4": ("", {"tol": 1e-4, "unexplained": "learned"}),
    "cells + learned unexplained, tol 1e-6": ("", {"tol": 1e-6, "unexplained": "learned"}),
}


def low_tissue_b4() -> np.ndarray:
    """Names of B4's spots with a tissue fraction below 0.5 (nuclei encoder)."""
    sdata = cp.datasets.her2st(["B4"])
    cp.pp.embed(sdata, encoder="nuclei", key_added="z_nuclei")
    t = sdata["table"]
    low = low_tissue(t.obsm["z_nuclei"])
    return np.asarray(t.obs_names[low])


def main() -> None:
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    fat = low_tissue_b4()
    t = cp.datasets.her2st(list(HER2ST_SECTIONS), images=False)["table"]
    stereo = cp.datasets.her2st_proportions("major", sections=list(HER2ST_SECTIONS)).reindex(t.obs_names)
    cp.pp.build_prototypes(t, cp.datasets.wu2021_cid4465(), cell_type_key="celltype_major", method="nb")
    content = t.uns["cpnn"]["prototype_sets"]["cpnn_prototypes"]["rna_content"]
    print("RNA content a cell (CID4465, mean total counts after QC):", {k: round(v) for k, v in content.items()})
    rows = []
    for name, (suffix, kwargs) in CONFIGS.items():
        key = f"dec{len(rows)}"
        t0 = time.perf_counter()
        cp.pp.deconvolve(t, key_added=key, count_shares=True, n_iter=1000, **kwargs)
        seconds = time.perf_counter() - t0
        info = t.uns["cpnn"]["deconvolution"][key]
        mapped = to_stereoscope(t.obsm[key + suffix])
        ok = (mapped.notna().all(1) & stereo.notna().all(1)).to_numpy()
        types = [c for c in stereo.columns if c in mapped]
        a, b = mapped.loc[ok, types].to_numpy(float), stereo.loc[ok, types].to_numpy(float)
        low = np.intersect1d(fat, t.obs_names[ok])
        rows.append(
            {
                "configuration": name,
                "Pearson (mean over types)": float(np.mean(columnwise_pearson(a, b))),
                "mean abs. difference": float(np.abs(a - b).mean()),
                "epithelial, all spots": float(mapped.loc[ok, "Epithelial"].mean()),
                "B4 low-tissue epithelial": float(mapped.loc[low, "Epithelial"].mean()),
                "stereoscope": float(stereo.loc[low, "Epithelial"].mean()),
                "low-tissue spots": len(low),
                "unexplained, B4 low-tissue": float(t.obsm[key].loc[low, "unexplained"].mean())
                if "unexplained" in t.obsm[key]
                else "-",
                "unexplained, all spots": float(t.obsm[key].loc[ok, "unexplained"].mean())
                if "unexplained" in t.obsm[key]
                else "-",
                "rounds": int(info["n_iter"]),
                "seconds": seconds,
            }
        )
        print(rows[-1], flush=True)
    print(f"stereoscope, epithelial on all spots: {float(stereo['Epithelial'].mean()):.3f}")
    print(table(rows))


if __name__ == "__main__":
    main()
