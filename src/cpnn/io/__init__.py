"""Reading the data users hold: whole-slide image files and spot arrays as SpatialData."""

from ._arrays import from_arrays
from ._wsi import WSI_SUFFIXES, NoPixelSizeError, is_wsi_path, read_wsi

__all__ = ["WSI_SUFFIXES", "NoPixelSizeError", "from_arrays", "is_wsi_path", "read_wsi"]
