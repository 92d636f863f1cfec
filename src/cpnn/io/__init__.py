"""Reading the data users hold: whole-slide image files and spot arrays as SpatialData."""

from ._arrays import from_arrays
from ._wsi import WSI_SUFFIXES, read_wsi

__all__ = ["WSI_SUFFIXES", "from_arrays", "read_wsi"]
