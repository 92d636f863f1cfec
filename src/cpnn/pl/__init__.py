"""Plotting: composition maps over the H&E, prototypes, measured vs predicted, accuracy, training."""

from ._expression import expression
from ._metrics import correlations, history
from ._proportions import proportions
from ._prototypes import prototypes

__all__ = ["correlations", "expression", "history", "proportions", "prototypes"]
