"""Names of what cpnn writes into a table: one place, read by every layer."""

from __future__ import annotations

import re

#: ``uns`` key of cpnn's records (panel, prototype sets, embeddings, fits, predictions, metrics).
UNS = "cpnn"
#: ``var`` column marking the predicted gene panel.
SELECTED = "cpnn_selected"
#: ``var`` column flagging genes in the panel only as markers of a cell type.
MARKER = "cpnn_marker"
#: ``varm`` key of the default prototype set.
PROTOTYPES = "cpnn_prototypes"
#: ``obsm`` key of the default cached embeddings.
EMBEDDING = "cpnn_embedding"
#: ``key_added`` of :func:`cpnn.tl.predict` (a layer; ``f"{PREDICTION}_proportions"`` in ``obsm``).
PREDICTION = "cpnn"
#: ``uns`` key of the physical scale cpnn records (micrometres per pixel per region, spot diameter).
SPATIAL = "cpnn_spatial"
#: Key of the tiles table written by :func:`cpnn.pp.tile`.
TILES = "cpnn_tiles"
#: Column of a composition's unexplained component (``cp.pp.deconvolve(unexplained=...)``).
UNEXPLAINED = "unexplained"


def in_reference_column(key: str) -> str:
    """``var`` column flagging the genes that have a prototype in ``varm[key]``."""
    return "cpnn_in_reference" if key == PROTOTYPES else f"{key}_in_reference"


#: Visium HD bin tables and shapes are named after their bin size, e.g. ``square_008um``.
_BIN_NAME = re.compile(r"square_(\d{3})um")


def bin_size_um(name: str) -> float | None:
    """The bin size in micrometres that a Visium HD element name carries (``..._square_016um`` -> 16)."""
    m = _BIN_NAME.search(str(name))
    return float(m.group(1)) if m else None


def proportions_key(key_added: str) -> str:
    """``obsm`` key of the composition weights written by a prediction ``key_added``."""
    return f"{key_added}_proportions"


def predicted_column(key_added: str) -> str:
    """``obs`` column marking the spots a prediction ``key_added`` covers."""
    return f"{key_added}_predicted"


def valid_name(name: str) -> str:
    """``name`` with every character spatialdata does not allow in names (``[A-Za-z0-9_.-]``) as ``_``.

    Runs of ``_`` are collapsed and trailing ones dropped: ``"Cancer Epithelial"`` -> ``"Cancer_Epithelial"``.
    """
    out = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))
    out = re.sub(r"_+", "_", out).strip("_")
    return out or "_"
