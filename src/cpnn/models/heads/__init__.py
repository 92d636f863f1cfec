"""Heads: embeddings -> panel expression (and a cell-type composition), registered by name."""

from .._registry import Registry
from ._base import Head, HeadOptions, MLPOptions, SlideHead, Standardise, mlp, sum_parts
from ._cpnn import CPNNHead, CPNNOptions
from ._direct import DirectHead, LogNormHead
from ._ridge import RidgeHead

#: Heads by the name :func:`cpnn.tl.fit` takes as ``head=``.
HEADS: Registry[type[Head]] = Registry("head", "head")
register_head = HEADS.register

register_head("cpnn")(CPNNHead)
register_head("direct")(DirectHead)
register_head("ridge")(RidgeHead)

__all__ = [
    "HEADS",
    "CPNNHead",
    "CPNNOptions",
    "DirectHead",
    "Head",
    "HeadOptions",
    "LogNormHead",
    "MLPOptions",
    "RidgeHead",
    "SlideHead",
    "Standardise",
    "mlp",
    "register_head",
    "sum_parts",
]
