"""cp.io.read_wsi: a whole-slide image file as a lazy, multiscale SpatialData image."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scanpy import logging as logg

from .._core._images import ATTRS_KEY
from .._errors import CpnnError

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

#: File types read by tiffslide (pure Python, the default) and by OpenSlide (``pip install cpnn[openslide]``).
TIFFSLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff", ".ome.tif", ".ome.tiff")
OPENSLIDE_ONLY = (".mrxs", ".vms", ".vmu", ".svslide")
WSI_SUFFIXES = TIFFSLIDE_SUFFIXES + OPENSLIDE_ONLY


class NoPixelSizeError(CpnnError):
    """A slide file that records no pixel size (callers that read files for the user add their own advice)."""


def is_wsi_path(value: object) -> bool:
    """Whether ``value`` names a whole-slide image file (by its suffix), not a SpatialData zarr store."""
    if not isinstance(value, str | os.PathLike):
        return False
    name = str(value).lower().rstrip("/")
    return name.endswith(WSI_SUFFIXES)


class LevelReader:
    """One pyramid level of a slide file, sliced as (c, y, x) uint8; opened lazily once per process.

    The reader travels to DataLoader workers by pickling its path, never an open file handle: a
    forked worker sharing the parent's file offset would read the wrong bytes.
    """

    def __init__(self, path: str, level: int, shape: tuple[int, int], downsample: float, backend: str) -> None:
        self.path, self.level, self.backend, self.downsample = path, int(level), backend, float(downsample)
        self.shape = (3, int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self._pid: int | None = None
        self._slide: Any = None
        self._array: Any = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_slide", "_array", "_pid")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = self._slide = self._array = None

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        self._slide = open_slide(self.path, self.backend)
        self._array = self._slide.zarr_group[str(self.level)] if self.backend == "tiffslide" else None
        self._pid = os.getpid()

    def __getitem__(self, key: tuple) -> np.ndarray:
        try:
            return self._read(key)
        except CpnnError:
            raise
        except Exception as err:  # imagecodecs, tifffile and OpenSlide raise their own types, naming no file
            raise CpnnError(
                f"Decoding {Path(self.path).name!r} (level {self.level}, pixels {key[1:]}) failed "
                f"({type(err).__name__}: {err}); the file is truncated or damaged. Copy it again from its source."
            ) from err

    def _read(self, key: tuple) -> np.ndarray:
        self._open()
        cs, ys, xs = (key + (slice(None),) * 3)[:3]
        y0, y1, _ = ys.indices(self.shape[1])
        x0, x1, _ = xs.indices(self.shape[2])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((3, max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)[cs]
        if self.backend == "tiffslide":
            block = np.asarray(self._array[y0:y1, x0:x1])
            if block.ndim == 2:
                block = block[..., None]
            block = np.moveaxis(block, -1, 0)
        else:  # OpenSlide: regions are addressed in level-0 pixels and come back as RGBA
            loc = (round(x0 * self.downsample), round(y0 * self.downsample))
            rgba = np.asarray(self._slide.read_region(loc, self.level, (x1 - x0, y1 - y0)))
            block = np.moveaxis(rgba[..., :3], -1, 0)
        if block.shape[0] == 1:
            block = np.repeat(block, 3, 0)
        elif block.shape[0] == 4:
            block = block[:3]
        return np.ascontiguousarray(block.astype(np.uint8, copy=False))[cs]


def open_slide(path: str | Path, backend: str) -> Any:
    """An open slide object of ``backend`` (``"tiffslide"`` or ``"openslide"``)."""
    if backend == "tiffslide":
        import tiffslide

        return tiffslide.TiffSlide(str(path))
    try:
        import openslide
    except ImportError as e:
        raise CpnnError(
            f"Reading {Path(path).name!r} needs OpenSlide: pip install 'cpnn[openslide]' "
            "(openslide-python with openslide-bin; wheels, no system library)."
        ) from e
    return openslide.OpenSlide(str(path))


def _unsupported_layout(path: Path, err: Exception) -> str:
    """Why tiffslide cannot read ``path``, with the conversion that makes it readable."""
    planar = False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            planar = tf.pages[0].planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except Exception:  # the message below still names the file and the reader's reason
        pass
    what = (
        "stores its colour channels as separate planes (planar configuration)"
        if planar
        else f"has a layout tiffslide cannot read ({err})"
    )
    return (
        f"{path.name!r} {what}. Convert it to a tiled, pyramidal RGB TIFF, e.g. "
        f"`vips tiffsave {path.name} converted.tif --tile --pyramid --compression jpeg`, or for an image that "
        "fits in memory: img = tifffile.imread(path); tifffile.imwrite('converted.tif', "
        "np.moveaxis(img, 0, -1), photometric='rgb', tile=(256, 256), resolution=..., "
        "resolutionunit='CENTIMETER'); then read_wsi('converted.tif', mpp=...)."
    )


def _backend(path: Path, backend: str) -> str:
    if backend not in ("auto", "tiffslide", "openslide"):
        raise CpnnError(f"backend={backend!r} is not one of 'auto', 'tiffslide', 'openslide'.")
    if backend != "auto":
        return backend
    return "openslide" if str(path).lower().endswith(OPENSLIDE_ONLY) else "tiffslide"


def _file_mpp(props: Any, backend: str) -> float | None:
    prefix = "tiffslide" if backend == "tiffslide" else "openslide"
    values = []
    for axis in ("x", "y"):
        v = props.get(f"{prefix}.mpp-{axis}")
        try:
            values.append(float(v))
        except (TypeError, ValueError):
            return None
    if not all(np.isfinite(v) and v > 0 for v in values):
        return None
    return float(np.mean(values))


def _chunk(tile: int) -> int:
    """Chunk side: a whole number of the file's tiles, about 512 pixels."""
    tile = max(int(tile), 1)
    return tile * max(1, round(512 / tile))


def read_wsi(
    path: str | os.PathLike,
    *,
    mpp: float | None = None,
    image_key: str | None = None,
    backend: Literal["auto", "tiffslide", "openslide"] = "auto",
) -> SpatialData:
    """Read a whole-slide image file as a SpatialData with one lazy, multiscale image.

    Every pyramid level of the file becomes a level of the image element (a dask array read tile by
    tile on demand), so :func:`cpnn.pp.tile` finds tissue on a coarse level and patches are read
    from level 0 window by window: a slide of many GB is never loaded whole. The pixel size comes
    from the file (Aperio ``MPP``, TIFF resolution tags, vendor metadata) and is recorded in
    ``sdata.attrs["cpnn"]["um_per_px"][image_key]``, where :func:`cpnn.pp.tile` reads it.

    Parameters
    ----------
    path
        A slide file: ``.svs``, ``.tif``/``.tiff`` (pyramidal, generic or OME), ``.ndpi``, ``.scn``,
        ``.bif``, ``.qptiff`` with tiffslide; ``.mrxs`` (3DHISTECH) and other OpenSlide formats with
        ``backend="openslide"`` (``pip install 'cpnn[openslide]'``).
    mpp
        Micrometres per level-0 pixel. Required when the file records none; when it records one,
        ``mpp=`` overrides it (with a warning if they differ by more than 1 %).
    image_key
        Name of the image element (default: the file name without its suffix).
    backend
        ``"tiffslide"`` (pure Python, the default), ``"openslide"``, or ``"auto"`` (OpenSlide only for
        the formats tiffslide cannot read).

    Returns
    -------
    A :class:`spatialdata.SpatialData` with the image ``image_key`` (channels ``r, g, b``; coordinate
    system ``"global"`` in level-0 pixels) and no table; tile it with :func:`cpnn.pp.tile`.
    """
    import dask.array as da
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale, Sequence
    from xarray import DataArray, Dataset, DataTree

    p = Path(path)
    if not p.exists():
        raise CpnnError(f"path={str(path)!r} does not exist; pass the path of a whole-slide image file.")
    if p.is_dir() and not str(p).lower().endswith(".mrxs"):
        raise CpnnError(
            f"path={str(path)!r} is a folder; for a SpatialData zarr store use spatialdata.read_zarr, "
            "else pass the slide file itself."
        )
    if mpp is not None and not (np.isfinite(mpp) and mpp > 0):
        raise CpnnError(f"mpp={mpp} must be a positive number of micrometres per pixel (e.g. 0.25 at 40x).")
    which = _backend(p, backend)
    try:
        slide = open_slide(p, which)
    except CpnnError:
        raise
    except Exception as e:  # readers raise their own types for unreadable files
        other = "backend='openslide'" if which == "tiffslide" else "backend='tiffslide'"
        raise CpnnError(f"Cannot read {p.name!r} with {which}: {e}. Check the file, or try {other}.") from e
    try:
        props = dict(slide.properties)
    except NotImplementedError as e:  # tiffslide parses the layout here; planar files end here
        raise CpnnError(_unsupported_layout(p, e)) from e
    found = _file_mpp(props, which)
    if mpp is None and found is None:
        raise NoPixelSizeError(
            f"{p.name!r} records no pixel size; pass mpp=<micrometres per pixel> (about 0.25 for a 40x scan, "
            "0.5 for 20x)."
        )
    if mpp is not None and found is not None and abs(mpp - found) > 0.01 * found:
        logg.warning(f"{p.name!r} records {found:g} um per pixel; using mpp={mpp:g} as passed")
    um = float(mpp if mpp is not None else found)
    dims = [(int(w), int(h)) for w, h in slide.level_dimensions]
    downs = [float(d) for d in slide.level_downsamples]
    tile = _tile_side(slide, which)
    key = image_key or p.name.split(".")[0]
    h0, w0 = dims[0][1], dims[0][0]
    stat = p.stat()
    ident = hashlib.sha256(f"{p.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    nodes = {}
    for level, ((w, h), ds) in enumerate(zip(dims, downs, strict=True)):
        reader = LevelReader(str(p.resolve()), level, (h, w), ds, which)
        # one pixel of the first and of the last tile of every level: a truncated file fails here, named
        reader[(slice(None), slice(0, 1), slice(0, 1))]
        reader[(slice(None), slice(h - 1, h), slice(w - 1, w))]
        c = _chunk(tile)
        arr = da.from_array(
            reader, chunks=(3, c, c), asarray=True, lock=False, fancy=False, name=f"wsi-{ident}-{level}"
        )
        sy, sx = h0 / h, w0 / w
        coords = {"c": ["r", "g", "b"], "y": (np.arange(h) + 0.5) * sy, "x": (np.arange(w) + 0.5) * sx}
        xa = DataArray(arr, dims=("c", "y", "x"), coords=coords)
        t = Identity() if level == 0 else Sequence([Scale([sy, sx], axes=("y", "x")), Identity()])
        xa.attrs["transform"] = {"global": t}
        nodes[f"scale{level}"] = Dataset({"image": xa})
    tree = DataTree.from_dict(nodes)
    Image2DModel().validate(tree)
    sdata = SpatialData(images={key: tree})
    sdata.attrs[ATTRS_KEY] = {
        "um_per_px": {key: um},
        "wsi": {key: {"path": str(p.resolve()), "backend": which, "mpp_from": "file" if mpp is None else "mpp="}},
    }
    logg.info(f"read {p.name}: {w0} x {h0} px at {um:g} um/px, {len(dims)} level(s), with {which}")
    return sdata


def _tile_side(slide: Any, backend: str) -> int:
    """The file's tile side at level 0 (256 when unknown, e.g. through OpenSlide)."""
    if backend == "tiffslide":
        try:
            page = slide.ts_tifffile.series[slide.ts_series_index if hasattr(slide, "ts_series_index") else 0]
            level = page.levels[0] if hasattr(page, "levels") else page
            tl = level.keyframe.tilelength if hasattr(level, "keyframe") else 0
            if tl:
                return int(tl)
        except Exception:  # only a chunking hint
            pass
    props = dict(slide.properties)
    try:
        return int(props.get("openslide.level[0].tile-height", 256))
    except (TypeError, ValueError):
        return 256
