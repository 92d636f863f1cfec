"""Models: encoders and heads (registries by name), losses, the prototype estimator.

Add a head or an encoder family with one class and one line::

    @cp.models.register_head("my_head")
    class MyHead(cp.models.Head): ...

    @cp.models.register_encoder("my_encoder")
    class MyEncoder(cp.models.Encoder): ...
"""

from ._losses import gene_softmax_mse, nb_log_prob
from ._nb_regression import NBRegressionResult, fit_nb_regression
from .encoders import (
    ENCODERS,
    HANDCRAFTED,
    NUCLEI,
    PRESETS,
    Encoder,
    HandcraftedEncoder,
    ModuleEncoder,
    NucleiEncoder,
    TimmEncoder,
    Uint8Input,
    build_encoder,
    encoder_class,
    encoder_config,
    file_digest,
    make_encoder,
    register_encoder,
)
from .heads import HEADS, CPNNHead, DirectHead, Head, LogNormHead, RidgeHead, SlideHead, Standardise, register_head

__all__ = [
    "ENCODERS",
    "HANDCRAFTED",
    "HEADS",
    "NUCLEI",
    "PRESETS",
    "CPNNHead",
    "DirectHead",
    "Encoder",
    "HandcraftedEncoder",
    "Head",
    "LogNormHead",
    "ModuleEncoder",
    "NBRegressionResult",
    "NucleiEncoder",
    "RidgeHead",
    "SlideHead",
    "Standardise",
    "TimmEncoder",
    "Uint8Input",
    "build_encoder",
    "encoder_class",
    "encoder_config",
    "file_digest",
    "fit_nb_regression",
    "gene_softmax_mse",
    "make_encoder",
    "nb_log_prob",
    "register_encoder",
    "register_head",
]
