"""What the training data say about fat: the epithelial share of low-tissue spots, per section, before any image.

Run (about 2 minutes on 2 CPU cores):
    CPNN_DATA_DIR=../shared/data python benchmarks/low_tissue.py

Issue #27 asks for a predicted epithelial share on B4's low-tissue spots (tissue fraction < 0.5 in
the nuclei encoder's reading: fat and glass) within 0.1 of stereoscope's. An image model can only
learn fat -> little epithelium if its training sections show that. This prints, per imaged
section, the low-tissue spots, and their mean epithelial share as the NB deconvolution (the
composition targets the presets learn from; top-250 panel, CID4465 prototypes) and the authors'
stereoscope give it, next to the same numbers on the other spots.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import table
from her2st import low_tissue, nb_prototypes_and_panels, to_stereoscope

import cpnn as cp


def main() -> None:
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    sdata = cp.datasets.her2st()
    adata = sdata["table"]
    stereo = cp.datasets.her2st_proportions("major").reindex(adata.obs_names)
    cp.pp.select_genes(adata, genes=nb_prototypes_and_panels(adata)["top-250"])
    cp.pp.embed(sdata, encoder="nuclei", key_added="z_nuclei")
    low = low_tissue(adata.obsm["z_nuclei"])
    cp.pp.deconvolve(adata, key_added="deconvolution", seed=0)
    props = adata.obsm["deconvolution"]
    epithelial = to_stereoscope(props)["Epithelial"]
    section = adata.obs["section"].astype(str).to_numpy()
    known = stereo.notna().all(1).to_numpy()
    rows = []
    for s in np.unique(section):
        fat, rest = (section == s) & low & known, (section == s) & ~low & known
        rows.append(
            {
                "section": s,
                "patient": s[0],
                "low-tissue spots": int(fat.sum()),
                "other spots": int(rest.sum()),
                "epithelial, low-tissue: deconvolution": float(epithelial[fat].mean()),
                "epithelial, low-tissue: stereoscope": float(stereo.loc[fat, "Epithelial"].mean()),
                "epithelial, other: deconvolution": float(epithelial[rest].mean()),
                "epithelial, other: stereoscope": float(stereo.loc[rest, "Epithelial"].mean()),
            }
        )
    print(table(rows))


if __name__ == "__main__":
    main()
