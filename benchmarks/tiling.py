"""Tiling speed and memory: cp.pp.tile on whole-slide-sized images stored on disk (zarr), and slide files.

Run (about 3 minutes on 2 CPU cores; writes ~1 GB of zarr under --tmp):
    python benchmarks/tiling.py
Slide file row (about 5 minutes; writes a ~1 GB JPEG pyramidal TIFF of 40,000 x 40,000 px):
    python benchmarks/tiling.py --sizes --wsi-size 40000

The slide file is read through ``cp.io.read_wsi`` (tiffslide): tissue tiles found with
``cp.pp.tile``, then every tile's pixels read through cpnn's patch pipeline (the reads
``cp.pp.embed`` makes, without an encoder); against the anchor a user would write, the reader's own
region API in a plain loop over the same tiles (``TiffSlide.read_region``, and OpenSlide's when
installed).

Synthetic H&E-coloured tissue (a few overlapping discs with texture) on white glass, at
0.5 um/px, written as a single-scale image and as a 5-level pyramid; 112 um tiles. Prints tiles
per second and the peak resident memory added by the call, for several image sizes: the memory
must not grow with the image (the full-resolution array is read one window at a time, or not at
all when a pyramid level is coarse enough).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, table

import cpnn as cp

MPP = 0.5


def tissue(size: int, chunk: int = 1024):
    """A lazy (3, size, size) uint8 image: four discs of tissue with texture on glass."""
    import dask.array as da

    def block(block_info=None):
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return tissue_window(size, y0, y1, x0, x1)

    n = -(-size // chunk)
    chunks = ((3,), (chunk,) * (n - 1) + (size - chunk * (n - 1),), (chunk,) * (n - 1) + (size - chunk * (n - 1),))
    return da.map_blocks(block, dtype=np.uint8, chunks=chunks)


def write(path: Path, size: int, pyramid: bool) -> None:
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    img = Image2DModel.parse(
        tissue(size),
        dims=("c", "y", "x"),
        scale_factors=[2, 2, 2, 2] if pyramid else None,
        chunks=(3, 1024, 1024),
    )
    sd.SpatialData(images={"wsi": img}).write(path, overwrite=True)


def wsi_rows(root: Path, size: int) -> list[dict]:
    """Tiling and tile reads of a pyramidal TIFF slide file: cpnn's pipeline against read_region loops."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from _wsi import write_pyramid

    from cpnn.data._patches import PatchDataset
    from cpnn.data._regions import region_images

    def source(y0, y1, x0, x1, step):
        return np.asarray(tissue_window(size, y0 * step, y1 * step, x0 * step, x1 * step, step)).transpose(1, 2, 0)

    path = root / f"slide_{size}.tif"
    with Peak() as w:
        write_pyramid(path, source, (size, size), mpp=MPP, levels=5, tile=512)
    print(f"wrote {path.name}: {path.stat().st_size / 2**20:.0f} MiB in {w.seconds:.0f} s", flush=True)
    rows = []
    with Peak() as p:
        sdata = cp.io.read_wsi(path)
        cp.pp.tile(sdata, tile_size_um=112)
    t = sdata["cpnn_tiles"]
    n = t.n_obs
    base = {"image (px)": f"{size} x {size}", "storage": "pyramidal TIFF (JPEG), 5 levels"}
    rows.append({**base, "step": "read_wsi + tile (tissue)", "tiles": n, "seconds": p.seconds,
                 "tiles/s": n / p.seconds, "peak MiB added": p.added})  # fmt: skip
    with Peak() as p:
        ds = PatchDataset(region_images(sdata, t, np.ones(n, bool)), patch_size_um=112, out_px=224)
        for i in range(len(ds)):
            ds[i]
    rows.append({**base, "step": "cpnn patch pipeline (every tile's pixels)", "tiles": n, "seconds": p.seconds,
                 "tiles/s": n / p.seconds, "peak MiB added": p.added})  # fmt: skip
    tile_px = round(112 / MPP)
    corners = (t.obsm["spatial"] - tile_px / 2).astype(int)
    order = np.lexsort((corners[:, 0], corners[:, 1]))
    readers = [("tiffslide", "TiffSlide.read_region loop")]
    try:
        import openslide  # noqa: F401

        readers.append(("openslide", "OpenSlide.read_region loop"))
    except ImportError:
        pass
    from cpnn.io._wsi import open_slide

    for backend, label in readers:
        slide = open_slide(path, backend)
        with Peak() as p:
            for x, y in corners[order]:
                np.asarray(slide.read_region((int(x), int(y)), 0, (tile_px, tile_px)))
        rows.append({**base, "step": f"anchor: {label}", "tiles": n, "seconds": p.seconds,
                     "tiles/s": n / p.seconds, "peak MiB added": p.added})  # fmt: skip
    path.unlink()
    return rows


def tissue_window(size: int, y0: int, y1: int, x0: int, x1: int, step: int = 1) -> np.ndarray:
    """Pixels of :func:`tissue` in a window (every ``step``-th pixel), computed without the whole image."""
    centres = np.array([[0.35, 0.35, 0.22], [0.62, 0.4, 0.18], [0.45, 0.68, 0.2], [0.7, 0.72, 0.12]]) * size
    y = np.arange(y0, y1, step, dtype=np.float32)[:, None]
    x = np.arange(x0, x1, step, dtype=np.float32)[None, :]
    inside = np.zeros((len(y), x.shape[1]), bool)
    for cx, cy, r in centres:
        inside |= (y - cy) ** 2 + (x - cx) ** 2 < r**2
    out = np.full((3, *inside.shape), 240, np.uint8)
    for c, v in enumerate((185, 105, 165)):
        out[c][inside] = v
    out[:, ::4, ::3] -= 15
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[5000, 10000, 20000])
    ap.add_argument("--wsi-size", type=int, default=0, help="also write and read a pyramidal TIFF this large")
    ap.add_argument("--tmp", default=None, help="folder for the zarr stores (default: a temporary folder)")
    args = ap.parse_args()
    import spatialdata as sd

    cp.settings.verbosity = 0
    root = Path(args.tmp or tempfile.mkdtemp(prefix="cpnn_tiling_"))
    rows = []
    try:
        for size in args.sizes:
            for pyramid in (False, True):
                path = root / f"wsi_{size}_{'pyr' if pyramid else 'single'}.zarr"
                write(path, size, pyramid)
                sdata = sd.read_zarr(path)
                with Peak() as p:
                    cp.pp.tile(sdata, mpp=MPP, tile_size_um=112)
                n = sdata["cpnn_tiles"].n_obs
                rows.append(
                    {
                        "image (px)": f"{size} x {size}",
                        "storage": "5-level pyramid" if pyramid else "single scale",
                        "full-res MiB (uint8)": round(3 * size * size / 2**20),
                        "tiles": n,
                        "seconds": p.seconds,
                        "tiles/s": n / p.seconds,
                        "peak MiB added": p.added,
                    }
                )
                print(table(rows[-1:]), flush=True)
                shutil.rmtree(path)
        if args.wsi_size:
            rows += wsi_rows(root, args.wsi_size)
            print(table(rows[-4:]), flush=True)
    finally:
        if args.tmp is None:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
