"""Plotting: composition maps over the H&E, prototypes, measured vs predicted, accuracy, training."""

from ._expression import expression
from ._metrics import correlations, history
from ._proportions import compare_proportions, dominant, proportions
from ._prototypes import prototypes
from ._spatial import legacy_anndata

__all__ = [
    "compare_proportions",
    "correlations",
    "dominant",
    "expression",
    "history",
    "legacy_anndata",
    "proportions",
    "prototypes",
]
