"""Patch embeddings of every spot, cached in ``obsm``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from anndata import AnnData
from scanpy import logging as logg
from tqdm.auto import tqdm

from .._core import (
    EMBEDDING,
    Rows,
    check_int,
    check_number,
    check_obs_mask,
    dist,
    get_table,
    is_spatialdata,
    renamed_arguments,
    selection_positions,
    uns_cpnn,
    uses_cpu_threads,
)
from .._errors import CpnnError
from .._settings import settings
from ..data import (
    Collection,
    add_context,
    is_collection,
    region_images,
    spot_coordinates_um,
    table_regions,
)
from ..models import EncoderOptions, build_encoder
from ..models.encoders import encoder_class, same_embedding
from ._encode import embed_regions
from ._found import store_found
from ._store import disk_embeddings

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from collections.abc import Callable

    from spatialdata import SpatialData
    from torch import nn


@renamed_arguments({"weights": "encoder_weights"}, since="0.3", removed_in="0.4")
@uses_cpu_threads
def embed(
    data: AnnData | SpatialData,
    *,
    encoder: str | nn.Module | Callable = "resnet18",
    encoder_kwargs: dict[str, Any] | None = None,
    encoder_weights: str | Path | None = None,
    pretrained: bool = False,
    patch_size_um: float = 112.0,
    patch_px: int | None = None,
    spots: Rows = None,
    batch_size: int = 64,
    device: str = "auto",
    seed: int = 0,
    num_workers: int | None = None,
    image_key: str | None = None,
    spot_diameter_um: float | None = None,
    table_key: str = "table",
    key_added: str = EMBEDDING,
) -> None:
    """Embed a spot-centred patch of every spot with a frozen encoder.

    Parameters
    ----------
    data
        SpatialData with images, spot shapes and a table annotating them; or a collection
        (``{sample: SpatialData or zarr path}`` or a list of zarr paths): every spot of each sample is
        embedded once into the disk cache (``cp.settings.cachedir / "embeddings"``, one sealed
        folder per sample, encoder and image content; float16), which :func:`cpnn.tl.fit` and
        :func:`cpnn.tl.predict` then read. Under several processes each embeds its share of the samples.
    encoder
        The encoder, as in :func:`cpnn.tl.fit`: a foundation-model preset (``"uni"``,
        ``"conch"``...), a timm architecture or ``hf-hub:`` id, ``"handcrafted"``, ``"nuclei"``,
        or an ``nn.Module``/callable.
    encoder_kwargs
        Constructor settings of the encoder (and cpnn's own ``mean``/``std``/``token``), as in
        :func:`cpnn.tl.fit`.
    encoder_weights
        A local checkpoint of the encoder (file or hub folder, loaded strictly; ``weights=`` before 0.3).
    pretrained
        Use the hub's pretrained weights (networked machines).
    patch_size_um
        Side of the patch around each spot centre, in micrometres.
    patch_px
        Side in pixels the patches are resized to (default: the encoder's own input size).
    spots
        Spots to embed (mask, ``(column, values)`` or region names); default all.
    batch_size
        Patches per encoder call (and per image read).
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed
        Seed of the random initialisation when no weights are loaded.
    num_workers
        DataLoader workers reading patches (default ``cp.settings.num_workers``).
    image_key
        Use this image for every region instead of choosing automatically.
    spot_diameter_um
        Spot diameter when the table does not record the scale (55 for Visium).
    table_key
        Key of the table.
    key_added
        Key in ``obsm``.

    Returns
    -------
    ``None``. Writes ``obsm[key_added]`` (spots x D, NaN for spots not embedded),
    ``uns["cpnn"]["embeddings"][key_added]`` (the encoder settings) and, for an encoder that
    measures something per spot, ``obs`` columns (``encoder="nuclei"``: ``obs["cpnn_n_nuclei"]``,
    the nuclei detected in each spot's patch). An encoder that finds objects adds them per region
    as a points element of ``data`` (``encoder="nuclei"``: ``sdata.points["cpnn_nuclei_<region>"]``,
    one point per nucleus under the embedded patches, with area in um^2, eccentricity, solidity,
    mean haematoxylin and a morphology ``label``; spatialdata-plot and napari-spatialdata draw it
    over the image). Where patches overlap, ``obs["cpnn_n_nuclei"]`` counts the points whose
    position lies in the spot's patch.
    """
    if is_collection(data):
        return _embed_collection(
            data, encoder=encoder, encoder_kwargs=encoder_kwargs, encoder_weights=encoder_weights, pretrained=pretrained,
            patch_size_um=patch_size_um, patch_px=patch_px, batch_size=batch_size, device=device, seed=seed,
            num_workers=num_workers, image_key=image_key, spot_diameter_um=spot_diameter_um, table_key=table_key,
        )  # fmt: skip
    if not is_spatialdata(data):
        raise CpnnError("data must be a SpatialData with images to embed patches; got an AnnData or other object.")
    adata = get_table(data, table_key)
    mask = check_obs_mask(adata, spots, argument="spots")
    config = EncoderOptions.make(
        encoder_weights=encoder_weights, pretrained=pretrained, patch_size_um=patch_size_um, patch_px=patch_px
    ).spec(encoder, seed=check_int("seed", seed, minimum=0), kwargs=encoder_kwargs)
    check_int("batch_size", batch_size)
    if spot_diameter_um is not None:
        check_number("spot_diameter_um", spot_diameter_um, low=0.0, strict=True)
    start = logg.info(f"embedding {int(mask.sum())} spots with {config['encoder']}")
    dev = settings.resolve_device(device)
    regions = region_images(data, adata, mask, image_key=image_key, spot_diameter_um=spot_diameter_um)
    model = build_encoder(config)
    found: dict[str, dict[str, np.ndarray]] = {}
    z = embed_regions(
        regions,
        int(mask.sum()),
        selection_positions(mask),
        model,
        patch_size_um=config["patch_size_um"],
        patch_px=config["patch_px"],
        device=dev,
        batch_size=batch_size,
        num_workers=settings.num_workers if num_workers is None else num_workers,
        stain=config.get("stain"),
        elements=found,
    )
    store_embedding(adata, z, mask, config, key_added, {r.region: r.fingerprint for r in regions})
    added = [f"{key_added!r} (adata.obsm)", "'embedding' (adata.uns['cpnn'])"]
    if found:
        what = model.region_element
        added += [f"{n!r} (sdata.points)" for n in store_found(data, adata, regions, found, key=key_added, what=what)]
    logg.info("    finished", time=start, deep="added\n    " + "\n    ".join(added))


def _embed_collection(data: Any, *, table_key: str, device: str, num_workers: int | None, **options: Any) -> None:
    """Every sample of a collection into the disk cache, each process taking its share of the samples."""
    coll = Collection(data, table_key=table_key)
    config = EncoderOptions.make({k: options[k] for k in EncoderOptions.names()}).spec(
        options["encoder"], seed=check_int("seed", options["seed"], minimum=0), kwargs=options["encoder_kwargs"]
    )
    dev = dist.setup(settings.resolve_device(device), timeout_s=settings.dist_timeout_s)
    encoder = build_encoder(config)
    start = logg.info(f"embedding {len(coll)} samples with {config['encoder']}")
    for i, name in enumerate(tqdm(coll.names, desc="samples", disable=not settings.progress_bar or len(coll) < 2)):
        if i % dist.world() != dist.rank():
            continue
        sdata = coll.open(name)
        disk_embeddings(
            sdata, coll.table(sdata), config, encoder, device=dev, batch_size=check_int("batch_size", options["batch_size"]),
            num_workers=settings.num_workers if num_workers is None else num_workers,
            image_key=options["image_key"], spot_diameter_um=options["spot_diameter_um"],
        )  # fmt: skip
    dist.barrier()
    logg.info(
        "    finished",
        time=start,
        deep="added\n    one embedding folder per sample (cp.settings.cachedir / 'embeddings')",
    )


def _region_rows(adata: AnnData, regions: list[str]) -> np.ndarray:
    _, region_key, _ = table_regions(adata)
    return adata.obs[region_key].astype(str).isin(regions).to_numpy()


def store_embedding(
    adata: AnnData, z: np.ndarray, mask: np.ndarray, config: dict, key: str, sources: dict[str, str] | None = None
) -> None:
    """Write embeddings of the ``mask`` spots, keeping other spots' rows when they are still valid.

    Rows of other spots are kept when the encoder config is the same and, for each region embedded
    now, the region's fingerprint (image content, spot geometry, scale) did not change; rows of a
    region whose image or geometry changed are cleared (NaN), so that they are embedded again.
    """
    embeddings = uns_cpnn(adata).setdefault("embeddings", {})
    record = embeddings.get(key, {})
    same = same_embedding(record.get("config"), config) and key in adata.obsm and adata.obsm[key].shape[1] == z.shape[1]
    full = (
        np.array(adata.obsm[key], dtype=np.float32) if same else np.full((adata.n_obs, z.shape[1]), np.nan, np.float32)
    )
    known = dict(record.get("sources") or {}) if same else {}
    if sources:
        changed = [r for r, fp in sources.items() if known.get(r) != fp]
        if changed and same:
            full[_region_rows(adata, changed) & ~mask] = np.nan
        known.update(sources)
    full[mask] = z
    adata.obsm[key] = full
    embeddings[key] = {"config": config, "dim": int(z.shape[1]), "sources": known}
    # per-spot measurements an encoder reports (the nuclei encoder: its nucleus count), as obs columns named
    # after the embedding (the default one: cpnn_<name>); a column cpnn did not write is never replaced
    written = uns_cpnn(adata).setdefault("obs_columns", {})
    for name, (idx, factor) in encoder_class(config["encoder"]).obs_features.items():
        column = obs_feature_column(key, name)
        if column in adata.obs and column not in written:
            logg.warning(
                f"obs[{column!r}] is not a column cpnn wrote, so it is kept; the {name} of embedding {key!r} are "
                f"column {idx} of obsm[{key!r}] x {factor:g}. Rename your column to have cpnn write it."
            )
            continue
        adata.obs[column] = np.round(full[:, idx].astype(np.float64) * factor, 6).astype(np.float32)
        written[column] = [key, name]


def obs_feature_column(key: str, name: str) -> str:
    """``obs`` column of an encoder's per-spot measurement ``name`` for embedding ``key``."""
    return f"cpnn_{name}" if key == EMBEDDING else f"{key}_{name}"


def cached_embedding(
    adata: AnnData, mask: np.ndarray, config: dict, key: str = EMBEDDING, sources: dict[str, str] | None = None
) -> np.ndarray | None:
    """Embeddings of the ``mask`` spots when ``obsm`` holds valid ones, else ``None``.

    Valid: the same encoder config and, when ``sources`` (the current fingerprint of each region's
    image and spots) are given, the same fingerprints as when the rows were embedded.
    """
    info = uns_cpnn(adata).get("embeddings", {}).get(key, {})
    if not same_embedding(info.get("config"), config) or key not in adata.obsm:
        return None
    if sources is not None:
        stored = info.get("sources") or {}
        if any(stored.get(r) != fp for r, fp in sources.items()):
            return None
    z = np.asarray(adata.obsm[key])[mask]
    return z if np.isfinite(z).all() else None


def spot_embeddings(
    data: Any,
    adata: AnnData,
    mask: np.ndarray,
    config: dict,
    encoder: torch.nn.Module | None,
    *,
    device: str,
    batch_size: int,
    num_workers: int,
    image_key: str | None,
    spot_diameter_um: float | None,
    key: str = EMBEDDING,
    cache: str = "obsm",
) -> np.ndarray:
    """Embeddings of the ``mask`` spots: from the ``obsm[key]`` cache when still valid, else computed.

    With ``cache="disk"`` every spot of the table is embedded once into the disk cache
    (:func:`cpnn.pp._store.disk_embeddings`) and the ``mask`` rows are read from it; the table is not written.

    With images, the cache is valid only for the same encoder config and the same image content,
    spot geometry and scale per region (an override such as ``image_key=`` or
    ``spot_diameter_um=`` recomputes). A table without images trusts its cache for the config.
    """
    if cache == "disk" and is_spatialdata(data) and len(data.images):
        z = disk_embeddings(
            data, adata, config, encoder, device=device, batch_size=batch_size, num_workers=num_workers,
            image_key=image_key, spot_diameter_um=spot_diameter_um,
        )  # fmt: skip
        return np.asarray(z[np.flatnonzero(mask)], dtype=np.float32)
    if not is_spatialdata(data) or not len(data.images):
        z = cached_embedding(adata, mask, config, key)
        if z is not None:
            return z
        raise CpnnError(
            "The table has no cached embedding for this encoder and there is no image to compute one: "
            "pass the SpatialData (with its images), or run cp.pp.embed on it first."
        )
    regions = region_images(data, adata, mask, image_key=image_key, spot_diameter_um=spot_diameter_um)
    sources = {r.region: r.fingerprint for r in regions}
    z = cached_embedding(adata, mask, config, key, sources)
    if z is not None:
        return z
    z = embed_regions(
        regions,
        int(mask.sum()),
        selection_positions(mask),
        encoder if encoder is not None else build_encoder(config),
        patch_size_um=config["patch_size_um"],
        patch_px=config["patch_px"],
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        stain=config.get("stain"),
    )
    store_embedding(adata, z, mask, config, key, sources)
    return z


def cached_embeddings(
    data: AnnData | SpatialData,
    adata: AnnData,
    config: dict,
    encoder: torch.nn.Module | None,
    *,
    spots: np.ndarray | None = None,
    cache: str = "obsm",
    context_um: float | None = None,
    device: str,
    batch_size: int = 64,
    num_workers: int = 0,
    image_key: str | None = None,
    spot_diameter_um: float | None = None,
    key: str = EMBEDDING,
) -> np.ndarray:
    """The one way into the embedding cache: the embeddings of ``spots`` for the encoder spec ``config``.

    ``cache="obsm"`` reads and fills ``obsm[key]`` (valid while the encoder spec and each region's
    image content, spot geometry and scale match); ``cache="disk"`` embeds every spot of the table
    once into the disk cache and, with ``spots=None``, returns all rows as the read-only float16
    memory map (a collection's samples, streamed). ``context_um``: each spot's embedding with the
    mean embedding of its region's spots within this radius appended (every spot in reach, selected
    or not, is embedded; not the whole region).
    """
    if cache == "disk" and spots is None:
        return disk_embeddings(
            data, adata, config, encoder, device=device, batch_size=batch_size, num_workers=num_workers,
            image_key=image_key, spot_diameter_um=spot_diameter_um,
        )  # fmt: skip
    mask = np.ones(adata.n_obs, bool) if spots is None else spots
    kw = {
        "device": device, "batch_size": batch_size, "num_workers": num_workers, "image_key": image_key,
        "spot_diameter_um": spot_diameter_um, "key": key, "cache": cache,
    }  # fmt: skip
    if not context_um:
        return spot_embeddings(data, adata, mask, config, encoder, **kw)
    _, region_key, _ = table_regions(adata)
    regions = adata.obs[region_key].astype(str)
    around = regions.isin(set(regions[mask])).to_numpy()
    xy, label = spot_coordinates_um(data, adata, around, image_key=image_key, spot_diameter_um=spot_diameter_um)
    near = within_reach(xy, label.astype(str), mask[around], float(context_um))
    around[np.flatnonzero(around)[~near]] = False
    z = spot_embeddings(data, adata, around, config, encoder, **kw)
    return add_context(z, xy[near], label[near], float(context_um))[mask[around]]


def within_reach(xy: np.ndarray, label: np.ndarray, selected: np.ndarray, radius_um: float) -> np.ndarray:
    """The spots that are selected or lie within ``radius_um`` of a selected spot of the same region."""
    from scipy.spatial import cKDTree

    near = selected.copy()
    for lab in np.unique(label[selected]):
        same = label == lab
        d, _ = cKDTree(xy[same & selected]).query(xy[same], distance_upper_bound=radius_um * (1 + 1e-6) + 1e-6)
        near[same] |= np.isfinite(d)
    return near
