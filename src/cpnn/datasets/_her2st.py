"""HER2ST (Andersson et al. 2021): legacy Spatial Transcriptomics of HER2+ breast cancer with H&E."""

from __future__ import annotations

import io
import shutil
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse
from tqdm.auto import tqdm

from .._core import SPATIAL, check_manifest, write_manifest, zarr_write_settings
from .._errors import CpnnError
from .._settings import settings
from ._fetch import fetch, registry

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

__all__ = ["HER2ST_IMAGED", "her2st", "her2st_proportions"]

#: Sections whose H&E image is published in the repository.
HER2ST_IMAGED = ("B4", "C2", "C3", "C4", "C5", "C6")
HER2ST_SECTIONS = tuple(f"{p}{i}" for p in "ABCD" for i in range(1, 7)) + tuple(
    f"{p}{i}" for p in "EFGH" for i in range(1, 4)
)
#: Centre-to-centre distance of legacy ST spots, and their diameter, in micrometres.
ST_PITCH_UM = 200.0
ST_SPOT_DIAMETER_UM = 100.0
#: Chunk edge (px) of the cached zarr images.
_CHUNK = 1024


def _image_path(section: str) -> str | None:
    prefix = f"her2st/data/ST-imgs/{section[0]}/{section}/"
    hits = [p for p in registry() if p.startswith(prefix)]
    return hits[0] if hits else None


def _read_section_table(section: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    counts = pd.read_csv(fetch(f"her2st/data/ST-cnts/{section}.tsv.gz"), sep="\t", index_col=0)
    spots = pd.read_csv(fetch(f"her2st/data/ST-spotfiles/{section}_selection.tsv"), sep="\t")
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    missing = counts.index.difference(spots.index)
    if len(missing):
        raise CpnnError(f"HER2ST section {section}: {len(missing)} count rows have no spot position.")
    return counts, spots.loc[counts.index]


def _um_per_px(spots: pd.DataFrame) -> float:
    """Microns per image pixel from the array pitch (spot centres 200 um apart)."""
    A = np.c_[spots["x"].to_numpy(float), spots["y"].to_numpy(float), np.ones(len(spots))]
    px_x = np.linalg.lstsq(A, spots["pixel_x"].to_numpy(float), rcond=None)[0][0]
    px_y = np.linalg.lstsq(A, spots["pixel_y"].to_numpy(float), rcond=None)[0][1]
    return ST_PITCH_UM / float(np.mean(np.abs([px_x, px_y])))


def _release_memory() -> None:
    """Hand freed heap back to the OS, so converting several images never stacks their peaks."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _write_level0(jpeg: Path, path: Path) -> None:
    """Decode a JPEG once and write it as a (c, y, x) uint8 zarr array in 1024-px chunks."""
    import imagecodecs
    import zarr

    logg.info(f"converting {jpeg.name} into a zarr store (once)")
    # imagecodecs decodes straight into one array: the only full-resolution copy in memory
    arr = imagecodecs.jpeg8_decode(jpeg.read_bytes())
    h, w, c = arr.shape
    z = zarr.create_array(str(path), shape=(c, h, w), chunks=(c, _CHUNK, _CHUNK), dtype=np.uint8)
    # strip by strip: each transposed copy is one row of chunks (~30 MiB), never the whole image
    for y0 in range(0, h, _CHUNK):
        z[:, y0 : y0 + _CHUNK, :] = arr[y0 : y0 + _CHUNK].transpose(2, 0, 1)
    del arr
    _release_memory()


def _store_path(section: str) -> Path:
    """The cache path of a section's image store (named after its JPEG's hash)."""
    sha = registry()[_image_path(section)][0]
    return settings.cachedir / "her2st" / f"{section}_image_{sha[:12]}.zarr"


def _image_cached(section: str) -> bool:
    """Whether the section's image store is in the cache and complete."""
    store = _store_path(section)
    return store.exists() and not check_manifest(store)


def _image_store(section: str):
    """Return the section's image element, converting the JPEG into a zarr store on first use."""
    import dask.array as da
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity

    rel = _image_path(section)
    store = _store_path(section)
    if store.exists():
        problem = check_manifest(store)
        if problem:
            logg.warning(f"the cached image store {store} is incomplete or corrupt ({problem}); rebuilding it")
            shutil.rmtree(store)
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{store.name}.{uuid.uuid4().hex}")
        level0 = store.with_name(f".{store.name}.{uuid.uuid4().hex}.level0")
        try:
            _write_level0(fetch(rel), level0)
            # the pyramid is computed lazily, chunk by chunk, from the level written above: the
            # decoded image is never in memory together with its downscaled copies
            img = Image2DModel.parse(
                da.from_zarr(str(level0)),
                dims=("c", "y", "x"),
                c_coords=["r", "g", "b"],
                scale_factors=[2, 2, 2],
                chunks=(3, _CHUNK, _CHUNK),
                transformations={section: Identity()},
            )
            with zarr_write_settings():
                sd.SpatialData(images={"image": img}).write(tmp)
            del img
            write_manifest(tmp)  # last: a store without its manifest never counts as complete
            tmp.rename(store)
        finally:
            for path in (tmp, level0):
                if path.exists():
                    shutil.rmtree(path, ignore_errors=True)
            _release_memory()
    return sd.read_zarr(store).images["image"]


def her2st(sections: Sequence[str] | None = None, *, images: bool = True) -> SpatialData:
    """Load HER2ST sections as a :class:`~spatialdata.SpatialData`.

    Parameters
    ----------
    sections
        Section names (``"A1"`` .. ``"H3"``). Default: the six sections whose H&E image is
        published (B4, C2..C6).
    images
        Whether to load the H&E images. Only B4 and C2..C6 have one; pass ``images=False``
        to load other sections (table and spot shapes only).

    Returns
    -------
    SpatialData with, per section ``S``, an image ``"{S}_image"`` (RGB, multiscale, lazily read
    from a zarr store in ``cp.settings.cachedir``), circles ``"{S}_spots"`` (100 um spots, in
    pixels), coordinate system ``"{S}"``, and one table ``"table"`` with raw counts over the
    genes shared by the sections, ``obs`` columns ``section``, ``patient``, ``array_row``,
    ``array_col``, ``region``, ``spot_id``, ``obsm["spatial"]`` (pixels) and
    ``uns["cpnn_spatial"]`` (microns per pixel per region, spot diameter).
    """
    import geopandas as gpd  # noqa: F401  (spatialdata's shapes backend)
    import spatialdata as sd
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    start = logg.info("loading HER2ST")
    sections = [sections] if isinstance(sections, str) else list(HER2ST_IMAGED if sections is None else sections)
    if not sections:
        raise CpnnError("sections is empty; pass section names such as ['B4', 'C3'] or None.")
    unknown = [s for s in sections if s not in HER2ST_SECTIONS]
    if unknown:
        raise CpnnError(f"sections: unknown HER2ST section(s) {unknown}; valid are {list(HER2ST_SECTIONS)}.")
    if len(set(sections)) != len(sections):
        raise CpnnError(f"sections contains duplicates: {sections}.")
    if images:
        no_image = [s for s in sections if _image_path(s) is None]
        if no_image:
            raise CpnnError(
                f"sections {no_image} have no published H&E image (only {list(HER2ST_IMAGED)} do); "
                "pass images=False to load their counts and spots."
            )

    # images first: a conversion's decoded JPEG never sits in memory next to a dense count table
    imgs = {}
    if images:
        todo = [s for s in sections if not _image_cached(s)]
        bar = tqdm(
            total=len(todo), desc="converting H&E JPEGs to zarr (once)", disable=not (settings.progress_bar and todo)
        )
        for s in sections:
            imgs[f"{s}_image"] = _image_store(s)
            if s in todo:
                bar.update()
        bar.close()
    tables, shapes, scale = [], {}, {}
    for s in sections:
        counts, spots = _read_section_table(s)
        mpp = _um_per_px(spots)
        scale[f"{s}_spots"] = mpp
        xy = spots[["pixel_x", "pixel_y"]].to_numpy(float)
        shapes[f"{s}_spots"] = ShapesModel.parse(
            xy,
            geometry=0,
            radius=np.full(len(xy), ST_SPOT_DIAMETER_UM / 2 / mpp),
            index=np.arange(len(xy)),
            transformations={s: Identity()},
        )
        obs = pd.DataFrame(
            {
                "section": s,
                "patient": s[0],
                "array_row": spots["y"].to_numpy(int),
                "array_col": spots["x"].to_numpy(int),
                "region": f"{s}_spots",
                "spot_id": np.arange(len(xy)),
            },
            index=[f"{s}_{i}" for i in counts.index],
        )
        a = ad.AnnData(sparse.csr_matrix(counts.to_numpy(np.float32)), obs=obs, var=pd.DataFrame(index=counts.columns))
        a.obsm["spatial"] = xy
        tables.append(a)
        del counts
    table = ad.concat(tables, join="inner", merge="same")
    for col in ("section", "patient", "region"):
        table.obs[col] = pd.Categorical(table.obs[col], categories=list(dict.fromkeys(table.obs[col])))
    table.uns[SPATIAL] = {
        "um_per_px": scale,
        "spot_diameter_um": ST_SPOT_DIAMETER_UM,
        "dataset": "HER2ST (Andersson et al. 2021)",
    }
    table = TableModel.parse(table, region=list(shapes), region_key="region", instance_key="spot_id")
    sdata = sd.SpatialData(images=imgs, shapes=shapes, tables={"table": table})
    logg.info(
        f"    {len(sections)} section(s), {table.n_obs} spots x {table.n_vars} genes",
        time=start,
    )
    return sdata


#: Cell types of the Wu et al. 2021 atlas (``celltype_major``) -> the stereoscope types of
#: :func:`her2st_proportions` ("major"), to compare cpnn's proportions with the authors'.
WU2021_TO_STEREOSCOPE: dict[str, str] = {
    "B-cells": "B-cells",
    "CAFs": "CAFs",
    "Cancer Epithelial": "Epithelial",
    "Normal Epithelial": "Epithelial",
    "Epithelial": "Epithelial",
    "Endothelial": "Endothelial",
    "Myeloid": "Myeloid",
    "Plasmablasts": "Plasma Cells",
    "Plasma Cells": "Plasma Cells",
    "PVL": "PVL",
    "T-cells": "T-cells",
}


def her2st_proportions(level: str = "major", *, sections: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-spot cell-type proportions estimated by the HER2ST authors with stereoscope.

    These come from the Wu et al. 2021 atlas; they are an independent check of cpnn's
    image-derived proportions, not a training target.

    Parameters
    ----------
    level
        ``"major"`` (8 types), ``"minor"`` or ``"subset"``.
    sections
        Sections to return (default: the six imaged ones).

    Returns
    -------
    DataFrame of spots x cell types whose index matches ``her2st()``'s table ``obs_names``
    (``"{section}_{x}x{y}"``).
    """
    if level not in ("major", "minor", "subset"):
        raise CpnnError(f"level={level!r}; use 'major', 'minor' or 'subset'.")
    sections = [sections] if isinstance(sections, str) else list(HER2ST_IMAGED if sections is None else sections)
    unknown = [s for s in sections if s not in HER2ST_SECTIONS]
    if unknown:
        raise CpnnError(f"sections: unknown HER2ST section(s) {unknown}.")
    frames = []
    with zipfile.ZipFile(fetch(f"her2st/res/ST-deconv/props/{level}.zip")) as z:
        for s in sections:
            df = pd.read_csv(io.BytesIO(z.read(f"{level}/{s}-proportion.tsv")), sep="\t", index_col=0)
            df.index = [f"{s}_{i}" for i in df.index]
            frames.append(df)
    return pd.concat(frames).fillna(0.0)
