"""Slide level: what ``slides=`` names, opened as SpatialData (slide files read and tiled here, not in ``data``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._core import is_spatialdata
from .._errors import CpnnError


def open_slides(slides: Any, names: list[str], *, tiles_key: str, tile_size_um: float | None) -> Any:
    """``slides`` with every entry of ``names`` a SpatialData: zarr stores read, slide files read and tiled.

    One SpatialData (or anything that is not a mapping) is returned as it is, for
    :func:`cpnn.data.slide_bags` to check. A store or file named by several samples is opened once.
    """
    if is_spatialdata(slides) or not isinstance(slides, Mapping):
        return slides
    opened: dict[str, Any] = {}
    return {name: _open(slides[name], name, opened, tiles_key, tile_size_um) for name in names if name in slides}


def _open(value: Any, name: str, opened: dict[str, Any], tiles_key: str, tile_size_um: float | None) -> Any:
    """The SpatialData of ``slides[name]``.

    A whole-slide image file is read lazily (:func:`cpnn.io.read_wsi`) and cut into ``tile_size_um``
    tissue tiles (:func:`cpnn.pp.tile`) under ``tiles_key``; its level 0 is never loaded whole.
    """
    if is_spatialdata(value):
        return value
    if not isinstance(value, str | Path):
        raise CpnnError(
            f"slides[{name!r}] must be a SpatialData, a .zarr path or a whole-slide image file, got {type(value).__name__}."
        )
    path = Path(value)
    if not path.exists():
        raise CpnnError(
            f"slides[{name!r}] = {str(path)!r} does not exist; pass a SpatialData, a .zarr path or a "
            "whole-slide image file."
        )
    key = str(path.resolve())
    if key in opened:
        return opened[key]
    from ..io import NoPixelSizeError, is_wsi_path, read_wsi
    from ..pp import tile

    if is_wsi_path(path):
        try:
            sdata = read_wsi(path)
        except NoPixelSizeError as e:
            raise CpnnError(
                f"slides[{name!r}] = {path.name!r} records no pixel size. Read and tile it yourself with "
                f"the scanner's pixel size, then pass the SpatialData: sdata = cp.io.read_wsi({str(path)!r}, "
                f"mpp=0.25); cp.pp.tile(sdata, tile_size_um={tile_size_um or 112.0:g}, key_added={tiles_key!r}); "
                f"slides={{{name!r}: sdata, ...}} (mpp about 0.25 for a 40x scan, 0.5 for 20x)."
            ) from e
        tile(sdata, tile_size_um=tile_size_um or 112.0, key_added=tiles_key)
    else:
        import spatialdata as sd

        sdata = sd.read_zarr(path)
    opened[key] = sdata
    return sdata
