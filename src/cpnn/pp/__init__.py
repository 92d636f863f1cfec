"""Preprocessing: gene panel, Visium HD pseudo-spots, cell-type prototypes, deconvolution, tissue tiles, patch embeddings, proportions as obs columns."""

from ._bins import aggregate_bins
from ._deconvolve import deconvolve
from ._embed import cached_embeddings, embed
from ._genes import select_genes
from ._obs import proportions_to_obs
from ._prototypes import build_prototypes
from ._tile import tile

__all__ = [
    "aggregate_bins",
    "build_prototypes",
    "cached_embeddings",
    "deconvolve",
    "embed",
    "proportions_to_obs",
    "select_genes",
    "tile",
]
