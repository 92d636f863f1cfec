"""Tools: split, fit, predict, evaluate."""

from ._evaluate import evaluate
from ._fit import fit
from ._model import CPNN
from ._predict import predict
from ._split import split

__all__ = ["CPNN", "evaluate", "fit", "predict", "split"]
