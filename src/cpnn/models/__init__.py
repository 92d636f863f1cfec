"""Internal: torch modules, losses and estimators."""

from ._encoder import HANDCRAFTED, HandcraftedEncoder, TimmEncoder, make_encoder
from ._heads import CPNNHead, DirectHead, SlideHead
from ._losses import gene_softmax_mse, nb_log_prob
from ._nb_regression import NBRegressionResult, fit_nb_regression

__all__ = [
    "HANDCRAFTED",
    "CPNNHead",
    "DirectHead",
    "HandcraftedEncoder",
    "NBRegressionResult",
    "SlideHead",
    "TimmEncoder",
    "fit_nb_regression",
    "gene_softmax_mse",
    "make_encoder",
    "nb_log_prob",
]
