"""Preprocessing: gene panel, cell-type prototypes, patch embeddings."""

from ._embed import embed
from ._genes import select_genes
from ._prototypes import build_prototypes

__all__ = ["build_prototypes", "embed", "select_genes"]
