"""HEST-1k (Jaume et al. 2024): H&E whole-slide images paired with spatial transcriptomics, per sample."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
from scanpy import logging as logg

from .._errors import CpnnError
from .._settings import settings

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData

#: The dataset on the Hugging Face hub (gated: accept its terms, then use a token).
HEST_REPO = "MahmoodLab/hest"
#: Where each sample's files lie under a HEST folder (the layout of the hub repository).
HEST_LAYOUT = {"st": "st/{id}.h5ad", "wsi": "wsis/{id}.tif", "metadata": "metadata/{id}.json"}


def hest_root(root: str | os.PathLike | None = None) -> Path:
    """The HEST folder: ``root``, else ``$CPNN_HEST_DIR``, else ``cp.settings.datadir / "hest"``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("CPNN_HEST_DIR")
    return Path(env) if env else Path(settings.datadir) / "hest"


def _missing(root: Path, ids: Sequence[str]) -> list[str]:
    return [
        str(Path(pattern.format(id=i)))
        for i in ids
        for pattern in HEST_LAYOUT.values()
        if not (root / pattern.format(id=i)).exists()
    ]


def _download(root: Path, ids: Sequence[str], missing: list[str]) -> None:
    """Fetch just the files of ``ids`` from the hub into ``root`` (token from ``HF_TOKEN``)."""
    where = f"{root} (root= or CPNN_HEST_DIR)"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise CpnnError(
            f"HEST files missing under {where}: {missing[:6]}. HF_HUB_OFFLINE is set, so nothing is downloaded: "
            f"copy them there, or run cp.datasets.hest({list(ids)!r}) once on a networked machine."
        )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with timm
        raise CpnnError("Downloading HEST needs huggingface_hub: pip install huggingface_hub.") from e
    patterns = [pattern.format(id=i) for i in ids for pattern in HEST_LAYOUT.values()]
    logg.info(f"downloading {len(ids)} HEST sample(s) from {HEST_REPO} into {root}")
    gated = (
        f"HEST-1k is gated: accept its terms at https://huggingface.co/datasets/{HEST_REPO}, then set HF_TOKEN "
        "to a read token (or run `hf auth login`)."
    )
    try:
        snapshot_download(repo_id=HEST_REPO, repo_type="dataset", local_dir=root, allow_patterns=patterns)
    except (GatedRepoError, RepositoryNotFoundError) as e:
        raise CpnnError(f"{gated} ({type(e).__name__})") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise CpnnError(f"{gated} (HTTP {status})") from e
        raise CpnnError(f"Downloading HEST failed: {e}. Copy the files under {where} instead.") from e
    except OSError as e:  # no network
        raise CpnnError(
            f"Cannot reach the hub to download HEST ({e}). Copy the files under {where}: {missing[:6]}."
        ) from e
    still = _missing(root, ids)
    if still:
        raise CpnnError(_why_missing(still, where))


def _why_missing(still: list[str], where: str) -> str:
    """Why files are missing after a download that returned: the hub lacks them, or it was not reached.

    ``snapshot_download`` returns a non-empty ``local_dir`` as it is when the hub cannot be
    reached (a logged warning only), so the hub is asked once more, for just these paths.
    """
    from huggingface_hub import HfApi

    try:
        on_hub = {info.path for info in HfApi().get_paths_info(HEST_REPO, still, repo_type="dataset")}
    except Exception as e:  # connection refused, DNS, timeout, proxy: the hub was not reached
        return (
            f"HEST files missing under {where}: {still[:6]}, and the hub cannot be reached to download them "
            f"({type(e).__name__}: {e}). Connect to the network and call again, or copy the files there."
        )
    absent = [p for p in still if p not in on_hub]
    if absent:
        return f"The hub has no file {absent[:6]} (check the sample ids: HEST ids look like 'TENX95', 'NCBI785')."
    return (
        f"The download of {still[:6]} into {where} did not complete although the hub holds them; "
        "call again to resume it."
    )


def _metadata(path: Path, sample: str) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CpnnError(f"metadata/{sample}.json of HEST is not readable JSON ({e}); download it again.") from e
    return meta


def _number(meta: dict, key: str) -> float | None:
    v = meta.get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def hest(
    ids: str | Sequence[str],
    *,
    root: str | os.PathLike | None = None,
    spot_diameter_um: float | None = None,
    mpp: float | None = None,
) -> SpatialData:
    """Load HEST-1k samples as one SpatialData: lazy whole-slide H&E, spots and counts.

    Reads the layout of the HEST folder (as on the hub, ``MahmoodLab/hest``): ``st/{id}.h5ad``
    (counts, ``obsm["spatial"]`` in level-0 pixels), ``wsis/{id}.tif`` (pyramidal TIFF) and
    ``metadata/{id}.json`` (``pixel_size_um_estimated``, ``spot_diameter`` in micrometres,
    ``st_technology``, ``organ``, ...). Files missing locally are downloaded for just these ids with
    ``huggingface_hub`` (the dataset is gated: a token in ``HF_TOKEN``), unless ``HF_HUB_OFFLINE`` is set.

    Parameters
    ----------
    ids
        HEST sample ids, e.g. ``["TENX95", "NCBI785"]``.
    root
        The HEST folder. Default ``$CPNN_HEST_DIR``, else ``cp.settings.datadir / "hest"``.
    spot_diameter_um
        Spot diameter, for samples whose metadata records none (e.g. Xenium or Visium HD pseudo-spots).
    mpp
        Micrometres per level-0 pixel, for samples whose metadata and image record none.

    Returns
    -------
    SpatialData with, per sample ``S``, a lazy multiscale image ``"{S}_image"``, circles
    ``"{S}_spots"`` (the metadata's spot diameter, in image pixels) in coordinate system ``S``, and
    one table ``"table"``: counts over the genes the samples share, ``obs["sample"]``, ``region`` and
    ``spot_id``, ``obsm["spatial"]``, ``uns["cpnn_spatial"]`` (scale) and ``uns["samples"]`` (each
    sample's metadata).
    """
    from ..io._arrays import build_sdata, sample_parts

    ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
    if not ids:
        raise CpnnError("ids is empty; pass HEST sample ids such as ['TENX95'].")
    if len(set(ids)) != len(ids):
        raise CpnnError(f"ids contains duplicates: {ids}.")
    base = hest_root(root)
    missing = _missing(base, ids)
    if missing:
        _download(base, ids, missing)
    start = logg.info(f"loading {len(ids)} HEST sample(s) from {base}")
    parts = []
    for i in ids:
        meta = _metadata(base / HEST_LAYOUT["metadata"].format(id=i), i)
        path = base / HEST_LAYOUT["st"].format(id=i)
        try:
            counts = ad.read_h5ad(path)
        except Exception as err:  # h5py's OSError for a truncated file, KeyError for a foreign one
            raise CpnnError(
                f"{str(path)!r} cannot be read as an h5ad file ({type(err).__name__}: {err}); it is truncated or "
                "corrupt. Delete it and load again to download it afresh."
            ) from err
        if "spatial" in counts.obsm:
            xy = np.asarray(counts.obsm["spatial"], dtype=float)[:, :2]
        elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(counts.obs.columns):
            xy = counts.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
        else:
            raise CpnnError(
                f"st/{i}.h5ad has neither obsm['spatial'] nor obs pxl_col_in_fullres/pxl_row_in_fullres; "
                "download it again."
            )
        sample_mpp = _number(meta, "pixel_size_um_estimated") or _number(meta, "pixel_size_um_embedded") or mpp
        diameter = spot_diameter_um or _number(meta, "spot_diameter")
        if diameter is None:
            raise CpnnError(
                f"metadata/{i}.json records no spot_diameter (technology {meta.get('st_technology', '?')!r}); "
                "pass spot_diameter_um=."
            )
        keep = {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool)}
        parts.append(
            sample_parts(
                base / HEST_LAYOUT["wsi"].format(id=i),
                xy,
                counts,
                name=i,
                spot_diameter_um=diameter,
                mpp=sample_mpp,
                uns=keep,
            )
        )
    sdata = build_sdata(parts)
    table = sdata["table"]
    for col in ("st_technology", "organ", "species", "oncotree_code", "patient"):
        values = {p.name: p.uns.get(col) for p in parts}
        if all(v is not None for v in values.values()):
            table.obs[col] = table.obs["sample"].map(values).astype("category")
    table.uns["cpnn_spatial"]["dataset"] = "HEST-1k (Jaume et al. 2024)"
    logg.info(f"    {len(ids)} sample(s), {table.n_obs} spots x {table.n_vars} genes", time=start)
    return sdata
