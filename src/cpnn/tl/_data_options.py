"""The data record of a fit: where its data is and how its inputs are read (``fit(data_kwargs=)``).

Its consumers are the input kinds (:mod:`cpnn.tl._kinds`): the spots' embeddings and their
spatial context, slide bags, collections.
"""

from __future__ import annotations

from dataclasses import dataclass

from anndata import AnnData

from .._core import EMBEDDING, TILES, Options, option
from .._settings import settings


@dataclass(frozen=True)
class DataOptions(Options):
    """Where a fit's data is and how its inputs are read (``fit(data_kwargs=)``); the input kinds read it."""

    layer: str | None = option(None, "Layer with raw counts (default ``X``).")
    table_key: str = option("table", "Key of the table (a tiles table: ``'cpnn_tiles'``).", stored=False)
    embedding_key: str = option(
        EMBEDDING, "``obsm`` key of the cached embeddings (``cp.pp.embed``'s ``key_added``), one per encoder."
    )
    image_key: str | None = option(None, "Force this image element (default: the sharpest image covering the spots).")
    spot_diameter_um: float | None = option(
        None, "Spot diameter in micrometres, overriding the one derived from the data.", low=0.0, strict=True
    )
    context_um: float | None = option(
        150.0,
        "Append to each spot's embedding the mean embedding of its region's spots within this radius (um); "
        "0 or None: none (frozen encoder, spot level; the paper: none).",
        low=0.0,
    )
    max_patches: int = option(4096, "Slide level: at most this many random tiles per slide a step (the paper: 4096).")
    tiles_key: str = option(TILES, "Slide level: key of the tiles tables.")
    slide_key: str = option("slide", "Slide level: the tiles table's column naming each tile's bulk sample.")
    panel: AnnData | None = option(
        None,
        "A collection: the AnnData whose gene panel and prototypes every sample uses (default the first sample's).",
        stored=False,
    )
    num_workers: int | None = option(
        None, "DataLoader workers reading patches (default ``cp.settings.num_workers``).", minimum=0, stored=False
    )
    embed_batch_size: int = option(64, "Patches per encoder call when embedding spots or tiles.", stored=False)

    @property
    def workers(self) -> int:
        """:attr:`num_workers`, or ``cp.settings.num_workers``."""
        return settings.num_workers if self.num_workers is None else self.num_workers
