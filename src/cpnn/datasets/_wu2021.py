"""Wu et al. 2021 breast cancer scRNA-seq atlas: labelled cells and cell-state profiles."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .._errors import DataFileError
from ._fetch import fetch

__all__ = ["wu2021_cid4465", "wu2021_profiles"]

_CID4465 = "spacedeconv_wu2021_CID4465_sc/single_cell_data_2.RData"
_REFPHI = "instaprism_BRCA_refPhi_wu2021/BRCA_refPhi.RDS"


def _read_r(path: Path, *, rds: bool):
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns about every Bioconductor class it keeps raw
        try:
            return rdata.read_rds(path) if rds else rdata.read_rda(path)
        except Exception as e:
            raise DataFileError(f"Could not read the R data file '{path}': {e}") from e


def wu2021_cid4465() -> ad.AnnData:
    """All 1,564 cells of patient CID4465 (TNBC) of the Wu et al. 2021 breast atlas.

    Read from the published ``SingleCellExperiment`` (``single_cell_data_2.RData`` of
    omnideconv/spacedeconv, GPL-3).

    Returns
    -------
    AnnData of cells x 29,733 genes, ``X`` raw UMI counts (CSR, float32), ``obs`` with
    ``celltype_major`` (9 types), ``celltype_minor``, ``celltype_subset``, ``Sample``,
    ``nCount_RNA``, ``nFeature_RNA``, ``percent.mito`` and ``subtype``.
    """
    sce = _read_r(fetch(_CID4465), rds=False)["single_cell_data_2"]
    m = sce.assays.data.listData["counts"]
    n_genes, n_cells = (int(v) for v in m.Dim)
    X = sparse.csc_matrix(
        (np.asarray(m.x, np.float32), np.asarray(m.i), np.asarray(m.p)), shape=(n_genes, n_cells)
    ).T.tocsr()
    genes = np.asarray(sce.rowRanges.partitioning.NAMES).astype(str)
    cells = np.asarray(sce.colData.rownames).astype(str)
    cols = sce.colData.listData
    obs = pd.DataFrame({str(k): np.asarray(v) for k, v in cols.items()}, index=cells)
    for col in ("celltype_major", "celltype_minor", "celltype_subset", "subtype", "Sample", "orig.ident"):
        if col in obs:
            obs[col] = pd.Categorical(obs[col].astype(str))
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["source"] = "Wu et al. 2021 (GSE176078), patient CID4465; omnideconv/spacedeconv"
    return adata


def wu2021_profiles() -> pd.DataFrame:
    """Normalised mean expression of 76 cell states of the whole Wu et al. 2021 atlas.

    Built by InstaPrism from all 100,064 atlas cells (26 patients, HER2+ included); each
    column sums to 1. A ready-made prototype matrix for :func:`cpnn.pp.build_prototypes`.

    Returns
    -------
    DataFrame of genes x 76 cell states. ``attrs["cell_type_map"]`` maps each state to one of
    8 cell types; pass it as ``cell_type_map=`` to average states into types.
    """
    o = _read_r(fetch(_REFPHI), rds=True)
    phi = getattr(o, "phi.cs")
    df = pd.DataFrame(
        np.asarray(phi.values, dtype=np.float64),
        index=np.asarray(phi.coords[phi.dims[0]].values).astype(str),
        columns=np.asarray(phi.coords[phi.dims[1]].values).astype(str),
    )
    mapping = {str(s): str(t) for t, states in o.map.items() for s in np.atleast_1d(np.asarray(states))}
    df.attrs["cell_type_map"] = {s: mapping[s] for s in df.columns}
    return df
