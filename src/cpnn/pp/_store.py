"""Embeddings computed once and kept on disk: one sealed folder per table, encoder and image content.

The folder's name is a digest of the encoder settings (weights by SHA-256), the patch geometry, the
content fingerprint of every region's image and spots, and the table's spot names: a changed image,
encoder or spot set gives another folder, so a stale cache is never read. Embeddings are a float16
``.npy`` array memory-mapped on read, so training streams rows from disk (pages the OS caches)
instead of holding a collection's embeddings in memory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData
from scanpy import logging as logg

from .._core import check_manifest, write_manifest
from .._settings import settings
from ..data import region_images
from ..models import build_encoder
from ._encode import embed_regions


def store_key(adata: AnnData, config: dict, sources: dict[str, str]) -> str:
    """Digest naming a table's embedding folder."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    h.update(json.dumps(sources, sort_keys=True).encode())
    h.update("\x00".join(map(str, adata.obs_names)).encode())
    return h.hexdigest()[:32]


def disk_embeddings(
    data: Any,
    adata: AnnData,
    config: dict,
    encoder: Any = None,
    *,
    device: str,
    batch_size: int = 64,
    num_workers: int = 0,
    image_key: str | None = None,
    spot_diameter_um: float | None = None,
    root: Path | None = None,
) -> np.ndarray:
    """Every spot's embedding (table order), read from its sealed folder or computed once and written there.

    Returns a read-only float16 memory map (n_obs x D). A folder whose files no longer match its
    manifest is rebuilt with a warning.
    """
    regions = region_images(
        data, adata, np.ones(adata.n_obs, bool), image_key=image_key, spot_diameter_um=spot_diameter_um
    )
    sources = {r.region: r.fingerprint for r in regions}
    root = Path(root) if root is not None else settings.cachedir / "embeddings"
    folder = root / store_key(adata, config, sources)
    if folder.exists():
        problem = check_manifest(folder)
        if not problem:
            return np.load(folder / "z.npy", mmap_mode="r")
        logg.warning(f"the embedding cache {folder} is incomplete or damaged ({problem}); embedding again")
        shutil.rmtree(folder, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    try:
        enc = encoder if encoder is not None else build_encoder(config)
        z = np.lib.format.open_memmap(tmp / "z.npy", mode="w+", dtype=np.float16, shape=(adata.n_obs, int(enc.out_dim)))
        embed_regions(
            regions,
            adata.n_obs,
            np.arange(adata.n_obs),
            enc,
            patch_size_um=config["patch_size_um"],
            patch_px=config["patch_px"],
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            out=z,
            stain=config.get("stain"),
        )
        z.flush()
        del z
        (tmp / "meta.json").write_text(
            json.dumps({"config": config, "sources": sources, "n_obs": adata.n_obs}, sort_keys=True)
        )
        write_manifest(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process (rank) sealed the same folder first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return np.load(folder / "z.npy", mmap_mode="r")
