"""What an image holds under the spots, read once from a sample of small windows.

One sample serves three checks: the intensity range of the stored values (so that a float image
holding 0..255, or a uint16 image holding 8-bit values, is read correctly), whether the image is
blank, constant or far too dark or bright under the spots (so that a degenerate image is never
embedded in silence), and a content digest that keys derived caches (so that a replaced image
never reuses stale embeddings).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

from .._errors import CpnnError

#: Side (px) of each sampled window, and the most windows per image.
WINDOW_PX = 32
MAX_WINDOWS = 16


@dataclass(frozen=True)
class ImageSample:
    """Statistics of an image's pixels under sampled spots (values scaled to [0, 1] by ``scale``)."""

    digest: str
    scale: float
    mean: float
    std: float
    rescaled: str = ""  # a note when the stored range was not the dtype's

    def problem(self) -> str:
        """Why the image cannot be what the spots sit on (empty when it can)."""
        if self.mean < 0.05:
            return f"it is nearly black under the spots (mean intensity {self.mean:.3f})"
        if self.mean > 0.98 and self.std < 0.03:
            return f"it is nearly white under the spots (mean intensity {self.mean:.3f}): no tissue"
        if self.std < 0.01:
            return f"it is constant under the spots (mean {self.mean:.2f}, sd {self.std:.4f}): a blank image"
        return ""


def intensity_scale(values: np.ndarray, key: str) -> tuple[float, str]:
    """The divisor that maps stored values to [0, 1], and a note when it is not the dtype's own range.

    uint8: 255. uint16: 65535, or 255 when every sampled value fits in 8 bits. Floats: 1 when the
    values lie in [0, 1], 255 when they reach up to 255 (an 8-bit image stored as float); anything
    larger is an error naming the fix.
    """
    dtype = values.dtype
    top = float(np.nanmax(values)) if values.size else 0.0
    if dtype == np.uint8:
        return 255.0, ""
    if dtype == np.uint16:
        if top <= 255:
            return 255.0, f"image {key!r} is uint16 but holds 8-bit values (max {top:g}); read as 8-bit"
        return 65535.0, ""
    if np.issubdtype(dtype, np.floating):
        if top <= 1.0 + 1e-3:
            return 1.0, ""
        if top <= 255.0 + 1e-3:
            return 255.0, f"image {key!r} is float but holds values up to {top:g}; read as 0..255 (divided by 255)"
        raise CpnnError(
            f"Image {key!r} is float with values up to {top:g}; cpnn reads floats in [0, 1] (or 0..255). "
            "Rescale it first, e.g. img / img.max()."
        )
    raise CpnnError(
        f"Image {key!r} has dtype {dtype}; cpnn reads uint8, uint16 or float images. "
        "Convert it first, e.g. (img / img.max() * 255).astype('uint8')."
    )


def _windows(array: Any, centres_px: np.ndarray) -> list[np.ndarray]:
    h, w = int(array.shape[-2]), int(array.shape[-1])
    half = WINDOW_PX // 2
    slices = []
    for x, y in np.asarray(centres_px, float):
        x0 = int(np.clip(round(x) - half, 0, max(w - WINDOW_PX, 0)))
        y0 = int(np.clip(round(y) - half, 0, max(h - WINDOW_PX, 0)))
        slices.append(array[:, y0 : y0 + WINDOW_PX, x0 : x0 + WINDOW_PX])
    if hasattr(array, "compute"):
        return [np.asarray(b) for b in dask.compute(*slices, scheduler="synchronous")]
    return [np.asarray(b) for b in slices]


def sample_image(array: Any, centres_px: np.ndarray, key: str) -> ImageSample:
    """Read windows around (up to 16 of) ``centres_px`` and summarise them.

    Read afresh at every call (no memo: about 40 ms for 1024-px chunks), so that a file edited in
    place within one process, or a numpy array changed in place, gives another digest, exactly as
    in a new process.

    Parameters
    ----------
    array
        The full-resolution (c, y, x) image (numpy or dask).
    centres_px
        Spot centres (x, y) in the image's pixels; windows are taken at evenly spaced ones.
    key
        The image's name, for messages.
    """
    centres_px = np.asarray(centres_px, float).reshape(-1, 2)
    if len(centres_px) > MAX_WINDOWS:
        centres_px = centres_px[np.linspace(0, len(centres_px) - 1, MAX_WINDOWS).round().astype(int)]
    where = hashlib.sha256(np.round(centres_px, 3).tobytes()).hexdigest()
    blocks = _windows(array, centres_px)
    channels = int(array.shape[0])
    values = np.concatenate([b[: min(channels, 3)].reshape(-1) for b in blocks]) if blocks else np.zeros(0)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise CpnnError(
            f"Image {key!r} holds NaN or infinite pixels under the spots; fill them (e.g. np.nan_to_num) first."
        )
    scale, note = intensity_scale(values, key)
    scaled = np.clip(values.astype(np.float64) / scale, 0.0, 1.0) if values.size else np.zeros(1)
    h = hashlib.sha256(f"{tuple(int(s) for s in array.shape)}|{values.dtype}|{where}".encode())
    for b in blocks:
        h.update(np.ascontiguousarray(b).tobytes())
    return ImageSample(h.hexdigest(), scale, float(scaled.mean()), float(scaled.std()), note)


def embeddings_barely_vary(z: np.ndarray) -> bool:
    """Whether embeddings of several spots are the same up to rounding (e.g. a blank image under all of them)."""
    z = np.asarray(z, dtype=np.float64)
    if len(z) < 2:
        return False
    spread = float((z.max(0) - z.min(0)).max())
    return spread <= 1e-5 * max(float(np.abs(z).max()), 1e-12)
