"""Slide level: each bulk sample is a bag of tissue tiles from its slide's tiles table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from anndata import AnnData

from .._core import check_unique_obs, is_spatialdata
from .._errors import CpnnError


@dataclass
class SlideBag:
    """The tiles of one bulk sample: rows ``mask`` of ``sdata.tables[tiles_key]``."""

    name: str
    sdata: Any
    table: AnnData
    mask: np.ndarray


def slide_bags(bulk: AnnData, slides: Any, *, tiles_key: str, slide_key: str) -> list[SlideBag]:
    """One bag per bulk sample (in ``bulk.obs_names`` order).

    ``slides`` is either a mapping from each sample to its SpatialData (files and stores are opened
    by the caller: :func:`cpnn.tl._slides.open_slides`), or one SpatialData whose tiles table names
    each tile's sample in ``obs[slide_key]``. With a mapping, a tiles table that has the
    ``slide_key`` column contributes only the tiles of that sample.
    """
    check_unique_obs(bulk)
    names = [str(n) for n in bulk.obs_names]
    if is_spatialdata(slides):
        sources = dict.fromkeys(names, slides)
    elif isinstance(slides, Mapping):
        missing = [n for n in names if n not in slides]
        if missing:
            raise CpnnError(
                f"slides has no entry for {len(missing)} bulk samples (e.g. {missing[:3]}); "
                "map every obs name of the bulk table to its SpatialData."
            )
        sources = {n: slides[n] for n in names}
        foreign = [n for n in names if not is_spatialdata(sources[n])]
        if foreign:
            raise CpnnError(
                f"slides[{foreign[0]!r}] is a {type(sources[foreign[0]]).__name__}, not a SpatialData; open stores and "
                "slide files first (cp.tl.fit and cp.tl.predict do)."
            )
    else:
        raise CpnnError(
            "slides must be a dict {sample: SpatialData, zarr path or slide file} or one SpatialData whose tiles table has "
            f"an obs[{slide_key!r}] column; got {type(slides).__name__}."
        )
    bags = []
    for name in names:
        sdata = sources[name]
        if tiles_key not in sdata.tables:
            raise CpnnError(
                f"The SpatialData of sample {name!r} has no table {tiles_key!r}; run cp.pp.tile(sdata) first "
                f"(tables: {list(sdata.tables)})."
            )
        table = sdata.tables[tiles_key]
        if slide_key in table.obs:
            mask = table.obs[slide_key].astype(str).to_numpy() == name
        elif is_spatialdata(slides):
            raise CpnnError(
                f"One SpatialData holds every slide, so its tiles table needs obs[{slide_key!r}] naming each "
                "tile's bulk sample; add that column or pass slides={sample: SpatialData}."
            )
        else:
            mask = np.ones(table.n_obs, bool)
        if not mask.any():
            raise CpnnError(f"Sample {name!r} has no tile in table {tiles_key!r}; check obs[{slide_key!r}].")
        bags.append(SlideBag(name, sdata, table, mask))
    return bags
