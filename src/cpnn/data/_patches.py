"""Spot-centred patches of a fixed physical size, read lazily in spatially sorted blocks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import dask
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


class ChunkCache:
    """The last decoded chunks of a chunked (dask) image, so neighbouring blocks of spots decode each chunk once.

    Parameters
    ----------
    array
        A dask array (c, y, x) whose channels form one chunk.
    capacity
        Decoded chunks kept (least recently used dropped first).
    """

    def __init__(self, array: Any, capacity: int = 32) -> None:
        self.array = array
        self.capacity = int(capacity)
        self.y_edges = np.cumsum((0, *array.chunks[1]))
        self.x_edges = np.cumsum((0, *array.chunks[2]))
        self.chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.decoded = 0

    def _range(self, edges: np.ndarray, lo: int, hi: int) -> range:
        return range(int(np.searchsorted(edges, lo, "right")) - 1, int(np.searchsorted(edges, hi - 1, "right")))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The window ``[:, y0:y1, x0:x1]`` (inside the image), decoding only chunks not cached."""
        keys = [(i, j) for i in self._range(self.y_edges, y0, y1) for j in self._range(self.x_edges, x0, x1)]
        missing = [k for k in keys if k not in self.chunks]
        if missing:
            decoded = dask.compute(*[self.array.blocks[0, i, j] for i, j in missing])
            self.decoded += len(missing)
            for k, block in zip(missing, decoded, strict=True):
                self.chunks[k] = np.asarray(block)
        out = np.empty((self.array.shape[0], y1 - y0, x1 - x0), dtype=self.array.dtype)
        for i, j in keys:
            self.chunks.move_to_end((i, j))
            cy0, cx0 = int(self.y_edges[i]), int(self.x_edges[j])
            block = self.chunks[(i, j)]
            ya, yb = max(y0, cy0), min(y1, cy0 + block.shape[1])
            xa, xb = max(x0, cx0), min(x1, cx0 + block.shape[2])
            out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = block[:, ya - cy0 : yb - cy0, xa - cx0 : xb - cx0]
        while len(self.chunks) > max(self.capacity, len(keys)):
            self.chunks.popitem(last=False)
        return out


def _read_window(array: Any, caches: dict, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """A window of an image: through a chunk cache for chunked arrays with one channel chunk, else a slice."""
    chunks = getattr(array, "chunks", None)
    if hasattr(array, "compute") and chunks is not None and len(chunks[0]) == 1:
        cache = caches.get(id(array))
        if cache is None:
            cache = caches[id(array)] = ChunkCache(array)
        return cache.read(y0, y1, x0, x1)
    block = array[:, y0:y1, x0:x1]
    return np.asarray(block.compute() if hasattr(block, "compute") else block)


def read_box(region: RegionImage, caches: dict, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """A region image's pixels ``[y0:y1, x0:x1]`` (c, h, w) as uint8 (or float in [0, 1]), white outside the image.

    ``caches``: per image, the decoded chunks neighbouring reads share (:class:`ChunkCache`).
    """
    arr = region.array
    h, w = arr.shape[-2], arr.shape[-1]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    block = _read_window(arr, caches, cy0, cy1, cx0, cx1)
    if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
        raise CpnnError(
            f"Image {region.image_key!r} holds NaN or infinite pixels near spots of region {region.region!r}; "
            "fill them (e.g. np.nan_to_num) first."
        )
    if block.dtype == np.uint8 and region.scale == 255.0 and block.shape[0] in (1, 3, 4):
        block = block[:3] if block.shape[0] == 4 else np.repeat(block, 3, 0) if block.shape[0] == 1 else block
        white = 255
    else:
        block, white = to_rgb_float(block, region.scale), 1.0
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return block
    # pad what lies outside the image with white (slide background)
    padded = np.full((3, y1 - y0, x1 - x0), white, dtype=block.dtype)
    padded[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = block
    return padded


class PatchDataset(torch.utils.data.Dataset):
    """Blocks of spot patches, each block read with one bounding-box read of the image.

    Spots are sorted by position within each region and cut into blocks of ``block_size``
    spots; item ``i`` is ``(positions in the table, patches)``. Patches travel at their native
    size (the image's pixels of ``patch_size_um``): uint8 (n, 3, s, s) for 8-bit images, float32 in
    [0, 1] otherwise; :func:`model_input` turns them into the encoder's input on its device
    (convert, then resize to ``out_px``), so workers never resize. Crops are computed once at init.

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
        self._caches: dict[int, ChunkCache] = {}  # per image: decoded chunks shared by neighbouring blocks
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
        x0, y0 = int(corners[:, 0].min()), int(corners[:, 1].min())
        x1, y1 = int(corners[:, 0].max()) + size, int(corners[:, 1].max()) + size
        if (y1 - y0) * (x1 - x0) <= 4 * len(corners) * size * size:  # dense spots: one read for the block
            padded = self._window(region, x0, y0, x1, y1)
            crops = np.stack([padded[:, y - y0 : y - y0 + size, x - x0 : x - x0 + size] for x, y in corners])
        else:  # sparse tiles over a large slide: the bounding box would be mostly unused pixels
            crops = np.stack([self._window(region, x, y, x + size, y + size) for x, y in corners])
        return torch.as_tensor(region.obs_index[sel]), torch.from_numpy(crops)

    def _window(self, region: RegionImage, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return read_box(region, self._caches, x0, y0, x1, y1)


def model_input(patches: torch.Tensor, out_px: int, device: str = "cpu") -> torch.Tensor:
    """Patches from :class:`PatchDataset` as the encoder's input on ``device``: float [0, 1], ``out_px`` square.

    The crops move at their native size and dtype (uint8: a quarter of float32's bytes), then are
    converted and resized (bilinear, antialiased) on the device.
    """
    x = patches.to(device, non_blocking=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] != out_px or x.shape[-2] != out_px:
        x = F.interpolate(x, size=(out_px, out_px), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0.0, 1.0)


class _ContiguousPerWorker(torch.utils.data.Sampler[int]):
    """Block order that hands each worker a contiguous run of blocks (the loader deals items round-robin).

    Neighbouring blocks share image chunks, so a worker's chunk cache serves its next block.
    """

    def __init__(self, n: int, workers: int) -> None:
        self.n, self.workers = int(n), max(int(workers), 1)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        runs = np.array_split(np.arange(self.n), self.workers)
        order = []
        for k in range(max((len(r) for r in runs), default=0)):
            order += [int(r[k]) for r in runs if k < len(r)]
        return iter(order)


def _worker_init(_: int) -> None:
    dask.config.set(scheduler="synchronous")  # a forked worker must not use the parent's thread pool


def patch_loader(
    dataset: PatchDataset, *, num_workers: int = 0, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """DataLoader over the blocks of ``dataset`` (one block per step), workers prefetching two blocks each.

    Workers are forked and switch dask to its synchronous scheduler first, so that they never wait
    on the parent's thread pool (a fork taken while dask's threads hold a lock deadlocks otherwise).
    """
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=_ContiguousPerWorker(len(dataset), num_workers),
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        prefetch_factor=2 if num_workers > 0 else None,
        pin_memory=pin_memory,
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
        out[torch.as_tensor(where[idx.numpy()])] = (model_input(p, patch_px) * 255).round().to(torch.uint8)
    return out
