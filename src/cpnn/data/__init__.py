"""Internal: locating regions on images and reading spot patches."""

from ._patches import PatchDataset, patch_loader
from ._regions import RegionImage, region_images, table_regions

__all__ = ["PatchDataset", "RegionImage", "patch_loader", "region_images", "table_regions"]
