"""Tools: split, fit, predict, evaluate; the options records and the input kinds they read."""

from . import _input_kinds  # noqa: F401  (registers the built-in input kinds)
from ._config import PRESETS, FitConfig
from ._data_options import DataOptions
from ._evaluate import evaluate
from ._fit import fit
from ._inputs import Inputs, Run, Split, read_split, spot_datasets
from ._kinds import INPUT_KINDS, InputKind, PredictRequest, kind_for, register_input_kind
from ._model import CPNN
from ._predict import predict, predict_rows, row_mask
from ._split import split
from ._train import TrainingDiverged, TrainOptions

__all__ = [
    "CPNN",
    "INPUT_KINDS",
    "PRESETS",
    "DataOptions",
    "FitConfig",
    "InputKind",
    "Inputs",
    "PredictRequest",
    "Run",
    "Split",
    "TrainOptions",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "kind_for",
    "predict",
    "predict_rows",
    "read_split",
    "register_input_kind",
    "row_mask",
    "split",
    "spot_datasets",
]
