"""The encoder run over the patches of located regions: the one loop every embedding path uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scanpy import logging as logg
from tqdm.auto import tqdm

from .._core import autocast
from .._errors import CpnnError
from .._settings import settings
from ..data import PatchDataset, RegionImage, model_input, patch_loader
from ..data._content import embeddings_barely_vary
from ..data._stain import Stain, estimate_stain, normalise_patches, thumbnail
from ..data._windows import RegionReader


@torch.no_grad()
def embed_regions(
    regions: list[RegionImage],
    n: int,
    rows: np.ndarray,
    encoder: torch.nn.Module,
    *,
    patch_size_um: float,
    patch_px: int,
    device: str,
    batch_size: int = 64,
    num_workers: int = 0,
    desc: str = "embedding",
    out: Any = None,
    stain: Mapping[str, Any] | None = None,
    elements: dict[str, dict[str, np.ndarray]] | None = None,
) -> np.ndarray:
    """Embed the spots of located ``regions``; row ``rows[i]`` of the result is table row ``i`` (``n`` rows).

    ``out`` may be a preallocated array (e.g. a float16 memory map on disk) that receives the rows.
    ``stain``: the encoder configuration's stain settings; each region's stain is then estimated
    from a thumbnail of its image and its patches are re-coloured with the recorded reference.
    ``elements``: receives, per region, the table of what an encoder that measures whole regions
    found there (:attr:`cpnn.models.Encoder.region_dim`; the nuclei encoder's nuclei).
    """
    coarsest = getattr(encoder, "coarsest_image_um_per_px", None)
    coarse = [r for r in regions if coarsest is not None and r.um_per_px > coarsest * 1.05]
    if coarse:
        r = max(coarse, key=lambda c: c.um_per_px)
        logg.warning(
            f"image {r.image_key!r} of region {r.region!r} has {r.um_per_px:.2g} um per pixel, but "
            f"{type(encoder).__name__} needs {coarsest:g} um per pixel or finer: its patches are upsampled "
            f"{r.um_per_px * patch_px / patch_size_um:.1f}x and nuclei there are merged or missed (counts too low). "
            "Give the full-resolution image (spatialdata_io.visium(..., fullres_image_file=...)), or use another encoder."
        )
    ds = PatchDataset(regions, patch_size_um=patch_size_um, out_px=patch_px, block_size=batch_size)
    sources: list[Stain] = []
    reference: Stain | None = None
    region_of = np.zeros(n, dtype=np.int64)  # per result row: the region its spot lies in
    if stain is not None:
        reference = Stain.from_config(stain)
        for k, r in enumerate(regions):
            try:
                sources.append(estimate_stain(thumbnail(r.array, r.scale)))
            except CpnnError as err:
                raise CpnnError(f"stain normalisation, region {r.region!r} (image {r.image_key!r}): {err}") from None
            region_of[rows[r.obs_index]] = k
    d = int(getattr(encoder, "region_dim", 0))
    if d:  # features measured over whole regions (the nuclei encoder segments overlapping patches once)
        out = np.zeros((n, int(encoder.out_dim)), dtype=np.float32) if out is None else out
        for k, r in enumerate(tqdm(regions, desc=f"{desc} (regions)", disable=not settings.progress_bar)):
            reader = RegionReader(
                r,
                patch_native=round(patch_size_um / r.um_per_px),
                patch_px=patch_px,
                stain=(sources[k], reference) if sources and reference is not None else None,
            )
            feats, found = encoder.measure_region(reader)
            out[rows[r.obs_index], :d] = feats
            if elements is not None:
                elements[r.region] = found
    encoder = encoder.to(device).eval()
    channels_last = str(device).startswith("cuda")  # faster convolutions on CUDA; a no-op for the rest
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    loader = patch_loader(ds, num_workers=num_workers, pin_memory=device.startswith("cuda"))
    for idx, patches in tqdm(loader, total=len(ds), desc=desc, disable=not settings.progress_bar):
        x = model_input(patches, patch_px, device)
        if sources:  # a block holds the spots of one region
            x = normalise_patches(x, sources[region_of[rows[int(idx[0])]]], reference)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            z = (encoder.patch_part(x) if d else encoder(x)).float().cpu().numpy()
        if out is None:
            out = np.zeros((n, z.shape[1]), dtype=np.float32)
        out[rows[idx.numpy()], d:] = z
    if out is not None and embeddings_barely_vary(np.asarray(out[: min(len(out), 5000)])):
        logg.warning(
            f"the embeddings of {n} spots barely vary (images {sorted({r.image_key for r in regions})}): the encoder "
            "sees the same input everywhere. Check the image under the spots (cp.pl.proportions draws it) and "
            "image_key=/spot_diameter_um=."
        )
    return out
