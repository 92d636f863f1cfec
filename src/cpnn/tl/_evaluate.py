"""cp.tl.evaluate: per-gene Spearman and Pearson between predicted and measured expression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
from anndata import AnnData
from scanpy import logging as logg

from .._core import PREDICTION, Rows, get_table, per_gene_metrics, uns_cpnn

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData


def evaluate(
    data: AnnData | SpatialData,
    *,
    layer: str = PREDICTION,
    groupby: str | None = "section",
    genes: Sequence[str] | None = None,
    spots: Rows = None,
    truth_layer: str | None = None,
    normalize: bool = True,
    table_key: str = "table",
) -> pd.DataFrame:
    """Per-gene Spearman and Pearson correlation between predicted and measured expression.

    Correlations are computed across the spots of each group (e.g. each held-out section), then
    averaged over groups; the pooled column correlates across all evaluated spots at once.
    The two protocols differ a lot in the literature, so both are reported and labelled.

    Parameters
    ----------
    data
        AnnData or SpatialData.
    layer
        Layer with the predictions (e.g. from :func:`cpnn.tl.predict`).
    groupby
        ``obs`` column defining the groups (``None``: one group). The default ``"section"`` falls
        back to the table's region column when there is no ``section`` column (e.g. Visium).
    genes
        Genes to evaluate; default the predicted panel (``uns["cpnn"]["predict"]["genes"]``, else
        ``var["cpnn_selected"]``).
    spots
        Spots to evaluate; default those with ``obs[f"{layer}_predicted"]``, else all.
    truth_layer
        Layer with the measured counts (default ``X``).
    normalize
        Compare log1p of counts per 10,000 over the evaluated genes (both sides), so that
        library size does not drive the correlation; ``False`` compares raw values.
    table_key
        Key of the table.

    Returns
    -------
    DataFrame indexed by gene with ``spearman_<group>``/``pearson_<group>`` per group, their means
    (``spearman_mean``, ``pearson_mean``) and ``spearman_pooled``/``pearson_pooled``. Genes constant
    within a group get NaN there, are counted, and are left out of that group's mean only.
    The summary (mean over genes per protocol, NaN counts) goes to ``uns["cpnn"]["metrics"][layer]``.
    """
    start = logg.info(f"evaluating layer {layer!r}")
    adata = get_table(data, table_key)
    df, summary = per_gene_metrics(
        adata, layer=layer, groupby=groupby, genes=genes, spots=spots, truth_layer=truth_layer, normalize=normalize
    )
    metrics = uns_cpnn(adata).setdefault("metrics", {})
    metrics[layer] = summary
    logg.info(
        f"    mean per-gene Spearman {summary['spearman_per_group_mean']:.3f} per {summary['groupby'] or 'all'}, "
        f"{summary['spearman_pooled']:.3f} pooled",
        time=start,
        deep=f"added\n    'metrics/{layer}' (adata.uns['cpnn'])",
    )
    return df
