"""Published gene panels."""

from __future__ import annotations

import numpy as np

from ._fetch import fetch


def histogene_genes() -> list[str]:
    """The 785-gene HER2ST panel used by HisToGene, Hist2ST, THItoGene and mclSTExp.

    Returns
    -------
    Gene symbols, in the published order.
    """
    return [str(g) for g in np.load(fetch("histogene_gene_lists/her_hvg_cut_1000.npy"), allow_pickle=True)]
