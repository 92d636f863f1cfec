"""Models: encoders and heads (registries by name), losses, the prototype estimator.

Add a head or an encoder family with one class and one line::

    @cp.models.register_head("my_head")
    class MyHead(cp.models.Head): ...

    @cp.models.register_encoder("my_encoder")
    class MyEncoder(cp.models.Encoder): ...
"""

from .._core import Options, option
from ._losses import gene_softmax_mse, nb_log_prob
from ._nb_regression import NBRegressionResult, fit_nb_regression
from ._registry import Registry
from .encoders import (
    ENCODERS,
    HANDCRAFTED,
    NUCLEI,
    PRESETS,
    Encoder,
    EncoderOptions,
    HandcraftedEncoder,
    ModuleEncoder,
    NucleiEncoder,
    TimmEncoder,
    Uint8Input,
    build_encoder,
    encoder_class,
    encoder_config,
    file_digest,
    is_module_key,
    make_encoder,
    module_class,
    module_key,
    register_encoder,
)
from .heads import (
    HEADS,
    CPNNHead,
    CPNNOptions,
    DirectHead,
    Head,
    HeadOptions,
    LogNormHead,
    MLPOptions,
    RidgeHead,
    SlideHead,
    Standardise,
    register_head,
)

__all__ = [
    "ENCODERS",
    "HANDCRAFTED",
    "HEADS",
    "NUCLEI",
    "PRESETS",
    "CPNNHead",
    "CPNNOptions",
    "DirectHead",
    "Encoder",
    "EncoderOptions",
    "HandcraftedEncoder",
    "Head",
    "HeadOptions",
    "LogNormHead",
    "MLPOptions",
    "ModuleEncoder",
    "NBRegressionResult",
    "NucleiEncoder",
    "Options",
    "Registry",
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
    "is_module_key",
    "make_encoder",
    "module_class",
    "module_key",
    "nb_log_prob",
    "option",
    "register_encoder",
    "register_head",
]
