"""Units of a composition: fractions of cells by default, shares of counts on request (METHOD.md section 8)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import cpnn as cp

QC_OFF = {"max_mito_pct": None, "min_genes": None, "max_genes": None, "min_cells_per_gene": 0}
#: mean counts of a cell of each planted type (METHOD.md's planted test)
CONTENT = np.array([500.0, 1500.0, 3000.0, 6000.0])


def _cells_and_spots(rng, *, genes=200, per_type=150, spots=300, cells_per_spot=10, theta=20.0):
    """A labelled reference of four types of unequal RNA content, and spots of ``cells_per_spot`` planted cells."""
    K = len(CONTENT)
    profiles = rng.gamma(0.5, 1.0, size=(K, genes)) + 0.01
    profiles /= profiles.sum(1, keepdims=True)
    names = [f"g{i}" for i in range(genes)]

    def cells(types):
        library = CONTENT[types] * rng.uniform(0.8, 1.2, size=len(types))
        mu = profiles[types] * library[:, None]
        return rng.negative_binomial(theta, theta / (theta + mu))

    labels = np.repeat(np.arange(K), per_type)
    reference = ad.AnnData(
        sparse.csr_matrix(cells(labels).astype(np.float32)),
        obs=pd.DataFrame({"ct": [f"t{k}" for k in labels]}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=names),
    )
    n = np.stack([rng.multinomial(cells_per_spot, rng.dirichlet(np.ones(K))) for _ in range(spots)])
    counts = np.stack([cells(np.repeat(np.arange(K), row)).sum(0) for row in n])
    table = ad.AnnData(
        sparse.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(index=[f"s{i}" for i in range(spots)]),
        var=pd.DataFrame(index=names),
    )
    fractions = n / n.sum(1, keepdims=True)
    shares = n * CONTENT / (n * CONTENT).sum(1, keepdims=True)
    return reference, table, fractions, shares


def test_deconvolve_returns_fractions_of_cells_of_unequal_rna_content():
    """Planted spots of 10 cells (500 to 6,000 counts a cell): proportions within 0.03 of the cell fractions."""
    reference, table, fractions, shares = _cells_and_spots(np.random.default_rng(0))
    cp.pp.build_prototypes(table, reference, cell_type_key="ct", **QC_OFF)
    record = table.uns["cpnn"]["prototype_sets"]["cpnn_prototypes"]
    assert record["units"] == "cells"
    content = np.array([record["rna_content"][f"t{k}"] for k in range(4)])
    np.testing.assert_allclose(content, CONTENT, rtol=0.05)
    # each prototype is an average cell of its type: its total is the type's counts a cell
    np.testing.assert_allclose(table.varm["cpnn_prototypes"].sum(0), CONTENT, rtol=0.05)

    cp.pp.deconvolve(table, n_genes=200, count_shares=True)
    cells = table.obsm["cpnn_deconvolution"].to_numpy()
    counted = table.obsm["cpnn_deconvolution_count_shares"].to_numpy()
    assert np.abs(shares - fractions).mean() > 0.1  # the two units differ here
    assert np.abs(cells - fractions).mean() < 0.03, np.abs(cells - fractions).mean()
    assert np.abs(counted - shares).mean() < 0.03, np.abs(counted - shares).mean()
    info = table.uns["cpnn"]["deconvolution"]["cpnn_deconvolution"]
    assert info["units"] == "cells"
    assert info["counts_per_cell"]["t3"] > 5 * info["counts_per_cell"]["t0"]


def test_profiles_count_cells_only_with_their_rna_content(cpnn_log):
    """Normalised profiles give shares of counts (said in a warning); ``rna_content=`` turns them into cells."""
    reference, table, fractions, shares = _cells_and_spots(np.random.default_rng(1), spots=150)
    X = reference.X.toarray()
    labels = reference.obs["ct"].to_numpy()
    means = pd.DataFrame({t: X[labels == t].mean(0) for t in ("t0", "t1", "t2", "t3")}, index=reference.var_names)
    normalised = means / means.sum(0)
    plain = table.copy()
    cp.pp.build_prototypes(plain, normalised)
    cp.pp.deconvolve(plain, n_genes=200)
    assert "shares of counts" in cpnn_log() and "rna_content" in cpnn_log()
    assert plain.uns["cpnn"]["deconvolution"]["cpnn_deconvolution"]["units"] == "shares of counts"
    assert np.abs(plain.obsm["cpnn_deconvolution"].to_numpy() - shares).mean() < 0.03

    content = dict(zip(means.columns, means.sum(0), strict=True))
    cp.pp.build_prototypes(table, normalised, rna_content=content)
    cp.pp.deconvolve(table, n_genes=200)
    assert np.abs(table.obsm["cpnn_deconvolution"].to_numpy() - fractions).mean() < 0.03
    with pytest.raises(cp.CpnnError, match="rna_content has no entry"):
        cp.pp.build_prototypes(table, normalised, rna_content={"t0": 1.0})
    with pytest.raises(cp.CpnnError, match="positive"):
        cp.pp.build_prototypes(table, normalised, rna_content={**content, "t1": 0.0})
    with pytest.raises(cp.CpnnError, match="profiles DataFrame"):
        cp.pp.build_prototypes(table, reference, cell_type_key="ct", rna_content=content, **QC_OFF)
    # one key holds one unit: shares of counts are not mixed into a key of cell fractions
    cp.pp.build_prototypes(plain, normalised, rna_content=content)
    with pytest.raises(cp.CpnnError, match="in shares of counts"):
        cp.pp.deconvolve(plain, n_genes=200, regions=np.arange(plain.n_obs) < 10)


def test_real_reference_rna_content_and_units(her2st_all, cid4465):
    """The CID4465 cells: plasmablasts carry more RNA a cell than epithelium; HER2ST proportions move towards them."""
    table = her2st_all["table"][her2st_all["table"].obs["section"] == "C3"].copy()
    cp.pp.build_prototypes(table, cid4465, cell_type_key="celltype_major")
    record = table.uns["cpnn"]["prototype_sets"]["cpnn_prototypes"]
    content = pd.Series(record["rna_content"])
    assert record["units"] == "cells" and (content > 0).all()
    assert content["Plasmablasts"] > content["Cancer Epithelial"]
    cp.pp.deconvolve(table, count_shares=True)
    cells = table.obsm["cpnn_deconvolution"]
    counted = table.obsm["cpnn_deconvolution_count_shares"]
    np.testing.assert_allclose(cells.sum(1), 1.0, atol=1e-5)
    per_cell = pd.Series(table.uns["cpnn"]["deconvolution"]["cpnn_deconvolution"]["counts_per_cell"])
    # a type with more counts a cell than average has a smaller share of cells than of counts
    rich, poor = per_cell.idxmax(), per_cell.idxmin()
    assert (cells[rich] <= counted[rich] + 1e-6).all() and (cells[poor] >= counted[poor] - 1e-6).all()
