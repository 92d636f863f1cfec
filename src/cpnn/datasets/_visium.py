"""10x Visium FFPE human breast cancer, through squidpy's dataset registry (mirror URLs and SHA-256)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from scanpy import logging as logg

from .._errors import CpnnError
from .._settings import settings

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

#: The sample's name in squidpy's registry (``squidpy/datasets/datasets.yaml``).
VISIUM_BREAST = "Visium_FFPE_Human_Breast_Cancer"


def registry_entry(name: str = VISIUM_BREAST):
    """The registry entry of ``name``: files, mirror keys and SHA-256 hashes, as squidpy records them."""
    try:
        from squidpy.datasets._registry import get_registry
    except ImportError as e:
        raise CpnnError(
            "cp.datasets.visium_breast needs squidpy >= 1.8, whose dataset registry carries the files' "
            "mirror and hashes: pip install -U squidpy."
        ) from e
    registry = get_registry()
    try:
        entry = registry.get(name)
    except KeyError:
        entry = None
    if entry is None:
        raise CpnnError(f"squidpy's dataset registry has no {name!r}; upgrade squidpy (pip install -U squidpy).")
    return entry, registry.s3_base_url


def _fetch(entry, base_url: str, folder: Path) -> None:
    """Download each missing file of ``entry`` into ``folder``, verified against its SHA-256."""
    import pooch

    for f in entry.files:
        target = folder / f.name
        if target.exists() or (f.name == "spatial.tar.gz" and (folder / "spatial").is_dir()):
            continue
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("CPNN_OFFLINE") == "1":
            urls = f.get_urls(base_url)
            raise CpnnError(
                f"{target} is missing and this machine is offline; download {urls[0] if urls else f.s3_key} "
                f"(SHA-256 {f.sha256}) into {folder}, or pass path= to a folder holding the sample's files."
            )
        errors = []
        for url in f.get_urls(base_url):
            try:
                logg.info(f"downloading {f.name} of {entry.name}")
                pooch.retrieve(
                    url, known_hash=f"sha256:{f.sha256}" if f.sha256 else None, fname=f.name, path=str(folder),
                    progressbar=settings.progress_bar,
                )  # fmt: skip
                break
            except (OSError, ValueError, RuntimeError) as e:  # no network, or a wrong hash
                errors.append(f"{url}: {e}")
        else:
            raise CpnnError(
                f"Cannot download {f.name} of {entry.name} ({'; '.join(errors) or 'no mirror'}); put the file in "
                f"{folder} or pass path= to a folder holding it."
            )


def visium_breast(path: str | os.PathLike | None = None, *, fullres: bool = True) -> SpatialData:
    """10x Visium FFPE human breast cancer (one section, 55 um spots) with its full-resolution H&E.

    The files (``filtered_feature_bc_matrix.h5``, ``spatial.tar.gz``, ``image.tif``) and their
    SHA-256 hashes come from squidpy's dataset registry; missing ones are downloaded from its mirror
    into ``path`` and verified, then the SpatialData is built by :func:`spatialdata_io.visium`.

    Parameters
    ----------
    path
        Folder holding (or receiving) the files. Default ``cp.settings.datadir / "visium" / <name>``.
    fullres
        Include the full-resolution H&E (``image.tif``); without it only Space Ranger's hires and
        lowres images are read.

    Returns
    -------
    SpatialData as :func:`spatialdata_io.visium` builds it (dataset id ``Visium_FFPE_Human_Breast_Cancer``),
    whose table cpnn reads as Visium (55 um spots).
    """
    try:
        import spatialdata_io
    except ImportError as e:
        raise CpnnError("cp.datasets.visium_breast reads the files with spatialdata-io: pip install 'cpnn[io]'.") from e

    entry, base_url = registry_entry()
    folder = Path(path) if path is not None else Path(settings.datadir) / "visium" / VISIUM_BREAST
    folder.mkdir(parents=True, exist_ok=True)
    if not fullres:
        entry = type(entry)(**{**entry.__dict__, "files": [f for f in entry.files if f.name != "image.tif"]})
    _fetch(entry, base_url, folder)
    if not (folder / "spatial").is_dir():
        with tarfile.open(folder / "spatial.tar.gz") as tar:
            tar.extractall(folder, filter="data")
    kw = {"fullres_image_file": folder / "image.tif"} if fullres else {}
    return spatialdata_io.visium(folder, dataset_id=VISIUM_BREAST, **kw)
