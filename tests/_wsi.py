"""Pyramidal TIFF files as scanners write them, for the tests: Aperio .svs, generic tiled BigTIFF, no pixel size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def _tiles(source: Callable[[int, int, int, int, int], np.ndarray], h: int, w: int, tile: int, step: int):
    """Tiles (row-major) of the level ``step`` times smaller; ``source(y0, y1, x0, x1, step)`` gives (y, x, 3)."""
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.full((tile, tile, 3), 255, np.uint8)
            part = source(y, min(y + tile, h), x, min(x + tile, w), step)
            block[: part.shape[0], : part.shape[1]] = part
            yield block


def array_source(img: np.ndarray) -> Callable:
    """A tile source from an in-memory (y, x, 3) image (levels by striding)."""

    def source(y0, y1, x0, x1, step):
        return img[::step, ::step][y0:y1, x0:x1]

    return source


def write_pyramid(
    path: Path,
    source: Callable | np.ndarray,
    shape: tuple[int, int] | None = None,
    *,
    mpp: float | None = None,
    kind: str = "generic",
    tile: int = 256,
    levels: int = 3,
    compression: str | None = "jpeg",
) -> Path:
    """Write a tiled pyramid (levels 1, 2, 4, ...) as an Aperio ``.svs`` or a generic BigTIFF.

    ``kind="svs"``: the ImageDescription carries ``MPP = ...``, page 1 is a thumbnail, then the
    reduced levels (the layout Aperio scanners write). ``kind="generic"``: TIFF resolution tags
    (pixels per centimetre) when ``mpp`` is given, reduced levels as SubIFDs.
    """
    import tifffile

    if isinstance(source, np.ndarray):
        shape = source.shape[:2]
        source = array_source(source)
    h, w = shape
    kw = {"tile": (tile, tile), "photometric": "rgb", "compression": compression, "metadata": None}
    dims = [(-(-h // 2**k), -(-w // 2**k)) for k in range(levels)]
    with tifffile.TiffWriter(path, bigtiff=kind != "svs") as tw:
        if kind == "svs":
            desc = (
                f"Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=70|AppMag = 20"
                + (f"|MPP = {mpp}" if mpp is not None else "")
            )
            tw.write(_tiles(source, h, w, tile, 1), shape=(h, w, 3), dtype=np.uint8, description=desc, **kw)
            thumb = np.stack([source(0, dims[-1][0], 0, dims[-1][1], 2 ** (levels - 1))])[0]
            tw.write(thumb, photometric="rgb", metadata=None)
            for k in range(1, levels):
                hk, wk = dims[k]
                tw.write(_tiles(source, hk, wk, tile, 2**k), shape=(hk, wk, 3), dtype=np.uint8, **kw)
        else:
            res = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
            tw.write(_tiles(source, h, w, tile, 1), shape=(h, w, 3), dtype=np.uint8, subifds=levels - 1, **res, **kw)
            for k in range(1, levels):
                hk, wk = dims[k]
                tw.write(_tiles(source, hk, wk, tile, 2**k), shape=(hk, wk, 3), dtype=np.uint8, subfiletype=1, **kw)
    return Path(path)


def disc_source(size: int, radius: float) -> Callable:
    """An H&E-coloured disc of tissue on white glass, computed per tile (never the whole image)."""

    def source(y0, y1, x0, x1, step):
        ys = (np.arange(y0, y1, dtype=np.float32) * step - size / 2) ** 2
        xs = (np.arange(x0, x1, dtype=np.float32) * step - size / 2) ** 2
        inside = (ys[:, None] + xs[None, :]) < radius**2
        out = np.full((y1 - y0, x1 - x0, 3), 245, np.uint8)
        out[inside] = (190, 110, 170)
        out[::3, ::2] -= 6
        return out

    return source
