"""Tools: split, fit, predict, evaluate."""

from ._evaluate import evaluate
from ._fit import fit
from ._model import CPNN
from ._predict import predict
from ._split import split
from ._train import TrainingDiverged

__all__ = ["CPNN", "TrainingDiverged", "evaluate", "fit", "predict", "split"]
