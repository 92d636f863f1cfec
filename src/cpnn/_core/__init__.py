"""Internal helpers shared by every layer: table access, input validation, writing results."""

from ._table import get_proportions, get_table, is_spatialdata, is_tiles_table, return_copy, to_uns, uns_cpnn
from ._validate import (
    check_counts,
    check_genes,
    check_key,
    check_obs_mask,
    check_unique_obs,
    gene_names,
    region_columns,
    selection_positions,
)

__all__ = [
    "check_counts",
    "check_genes",
    "check_key",
    "check_obs_mask",
    "check_unique_obs",
    "gene_names",
    "get_proportions",
    "get_table",
    "is_spatialdata",
    "is_tiles_table",
    "region_columns",
    "return_copy",
    "selection_positions",
    "to_uns",
    "uns_cpnn",
]
