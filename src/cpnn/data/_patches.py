"""Spot-centred patches of a fixed physical size, read lazily in spatially sorted blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._core import selection_positions
from .._errors import CpnnError
from ._regions import RegionImage, region_images


def to_rgb_float(block: np.ndarray, scale: float | None = None) -> np.ndarray:
    """(c, h, w) image block -> float32 RGB in [0, 1].

    ``scale`` divides the stored values (see :func:`cpnn.data._content.intensity_scale`); default
    the dtype's range: 255 for uint8, 65535 for uint16, 1 for floats.
    """
    c = block.shape[0]
    if c == 1:
        block = np.repeat(block, 3, axis=0)
    elif c == 4:
        block = block[:3]
    elif c != 3:
        raise CpnnError(f"Images must have 1 (grey), 3 (RGB) or 4 (RGBA) channels, found {c}.")
    if scale is None:
        if block.dtype == np.uint8:
            scale = 255.0
        elif block.dtype == np.uint16:
            scale = 65535.0
        elif np.issubdtype(block.dtype, np.floating):
            scale = 1.0
        else:
            raise CpnnError(f"Image dtype {block.dtype} is not supported; use uint8, uint16 or float in [0, 1].")
    out = block.astype(np.float32)
    if scale != 1.0:
        out /= np.float32(scale)
    return np.clip(out, 0.0, 1.0)


class PatchDataset(torch.utils.data.Dataset):
    """Blocks of spot patches, each block read with one bounding-box read of the image.

    Spots are sorted by position within each region and cut into blocks of ``block_size``
    spots; item ``i`` is ``(positions in the table, patches)`` with patches a float tensor of
    shape ``(n, 3, out_px, out_px)`` in [0, 1]. Crops are computed once at init.

    Parameters
    ----------
    regions
        Located regions (:func:`cpnn.data.region_images`).
    patch_size_um
        Side of a patch in micrometres.
    out_px
        Side of the returned patches in pixels (the encoder input).
    block_size
        Spots per item.
    """

    def __init__(
        self, regions: Sequence[RegionImage], *, patch_size_um: float, out_px: int, block_size: int = 64
    ) -> None:
        self.out_px = int(out_px)
        self.blocks: list[tuple[RegionImage, np.ndarray, np.ndarray, int]] = []
        for r in regions:
            size = round(patch_size_um / r.um_per_px)
            h, w = r.array.shape[-2], r.array.shape[-1]
            if size < 2:
                raise CpnnError(f"patch_size_um={patch_size_um} is under 2 pixels of region {r.region!r}.")
            if size > h or size > w:
                raise CpnnError(
                    f"patch_size_um={patch_size_um} is {size} px, larger than the image of region {r.region!r} "
                    f"({h} x {w} px); choose a smaller patch."
                )
            corner = np.floor(r.centers_px - size / 2.0).astype(np.int64)  # (x0, y0)
            order = np.lexsort((corner[:, 0], corner[:, 1]))
            for start in range(0, len(order), block_size):
                sel = order[start : start + block_size]
                self.blocks.append((r, sel, corner[sel], size))

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        region, sel, corners, size = self.blocks[i]
        arr = region.array
        h, w = arr.shape[-2], arr.shape[-1]
        x0, y0 = int(corners[:, 0].min()), int(corners[:, 1].min())
        x1, y1 = int(corners[:, 0].max()) + size, int(corners[:, 1].max()) + size
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        block = arr[:, cy0:cy1, cx0:cx1]
        block = np.asarray(block.compute() if hasattr(block, "compute") else block)
        if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
            raise CpnnError(
                f"Image {region.image_key!r} holds NaN or infinite pixels near spots of region {region.region!r}; "
                "fill them (e.g. np.nan_to_num) first."
            )
        block = to_rgb_float(block, region.scale)
        # pad what lies outside the image with white (slide background)
        padded = np.ones((3, y1 - y0, x1 - x0), dtype=np.float32)
        padded[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = block
        crops = np.stack([padded[:, y - y0 : y - y0 + size, x - x0 : x - x0 + size] for x, y in corners])
        patches = torch.from_numpy(crops)
        if size != self.out_px:
            patches = F.interpolate(
                patches, size=(self.out_px, self.out_px), mode="bilinear", antialias=True, align_corners=False
            )
        return torch.as_tensor(region.obs_index[sel]), patches.clamp_(0.0, 1.0)


def _worker_init(_: int) -> None:
    import dask

    dask.config.set(scheduler="synchronous")  # a forked worker must not use the parent's thread pool


def patch_loader(dataset: PatchDataset, *, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """DataLoader over the blocks of ``dataset`` (one block per step)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        persistent_workers=False,
    )


def spot_patches(
    data: Any,
    adata: Any,
    mask: np.ndarray,
    *,
    patch_size_um: float,
    patch_px: int,
    image_key: str | None = None,
    spot_diameter_um: float | None = None,
    block_size: int = 64,
) -> torch.Tensor:
    """Every ``mask`` spot's patch as uint8 (N, 3, px, px), in table order (for training an encoder)."""
    regions = region_images(data, adata, mask, image_key=image_key, spot_diameter_um=spot_diameter_um)
    ds = PatchDataset(regions, patch_size_um=patch_size_um, out_px=patch_px, block_size=block_size)
    where = selection_positions(mask)
    out = torch.zeros((int(mask.sum()), 3, patch_px, patch_px), dtype=torch.uint8)
    for i in range(len(ds)):
        idx, p = ds[i]
        out[torch.as_tensor(where[idx.numpy()])] = (p * 255).round().to(torch.uint8)
    return out
