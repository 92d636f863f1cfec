"""A user's session, written with types and checked by mypy in CI (never executed): cpnn's public signatures.

``mypy`` reads cpnn's annotations (``py.typed``) as a user's type checker or IDE does; a public
function whose signature stops accepting what its docs promise (an AnnData or a SpatialData, a
collection of stores, masks of rows) or whose result changes type fails this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure
from spatialdata import SpatialData

import cpnn as cp


def spot_level(sdata: SpatialData, reference: AnnData) -> pd.DataFrame:
    """The README's day: genes, prototypes, targets, fit, predict, evaluate, maps, the legacy view."""
    table: AnnData = sdata.tables["table"]
    cp.pp.select_genes(sdata, n_top_genes=250)
    cp.pp.build_prototypes(table, reference, cell_type_key="celltype_major", method="nb")
    cp.pp.deconvolve(sdata, regions=np.asarray(table.obs["patient"] == "C"))
    cp.pp.embed(sdata, encoder="handcrafted")
    model: cp.CPNN = cp.tl.fit(sdata, train=["C1", "C2"], validation=("section", ["C6"]), encoder="handcrafted")
    model.save(Path("model"))
    paper = cp.tl.fit(
        sdata, preset="paper", head_kwargs={"unexplained": "flat"}, train_kwargs={"epochs": 50},
        data_kwargs={"context_um": 0}, encoder_kwargs={"patch_size_um": 56.0},
    )  # fmt: skip
    assert paper.config.training.epochs == 50 and cp.tl.kind_for(sdata, level="spot").name
    cp.tl.predict(sdata, model, regions="B4")
    folds: list[pd.Series] = cp.tl.split(table, by="patient")
    assert folds
    fig = cp.pl.proportions(sdata, region="B4", return_fig=True)
    assert isinstance(fig, Figure)
    cp.pl.dominant(sdata, groups={"immune": ["B-cells", "T-cells"]}, show=False)
    view: AnnData = cp.pl.legacy_anndata(sdata, region="B4")
    assert view.n_obs
    return cp.tl.evaluate(sdata, genes=list(table.var_names[:10]), spots=np.asarray(table.obs["section"] == "B4"))


def collection(stores: list[Path], model: cp.CPNN) -> None:
    """Several zarr stores, never concatenated: a fit over named samples and a prediction into them."""
    named: dict[str, str | Path | SpatialData] = {p.stem: p for p in stores}
    cp.tl.fit(named, train=["a", "b"], encoder="handcrafted")
    cp.tl.predict([str(p) for p in stores], model, samples=["a"])


def readers(image: np.ndarray, counts: AnnData) -> SpatialData:
    """The data a user holds, read into SpatialData."""
    sdata: SpatialData = cp.io.from_arrays(image, np.asarray(counts.obsm["spatial"]), counts, spot_diameter_um=55.0)
    cp.pp.tile(cp.io.read_wsi("slide.svs"))
    return sdata if len(sdata.images) else cp.datasets.her2st(["B4"])
