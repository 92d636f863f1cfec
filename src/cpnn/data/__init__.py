"""Data: where spots lie on images, patch reading, spatial context, slide bags, training datasets."""

from ._bags import SlideBag, slide_bags
from ._collection import Collection, is_collection, read_store
from ._context import add_context, spot_coordinates_um
from ._datasets import BagDataset, Batch, SpotDataset
from ._patches import PatchDataset, model_input, patch_loader, spot_patches, to_rgb_float
from ._regions import RegionImage, image_levels, region_images, table_regions
from ._samplers import PermutationSampler, RankBatchSampler, batch_loader
from ._shards import Shard, ShardDataset

__all__ = [
    "BagDataset",
    "Batch",
    "Collection",
    "PatchDataset",
    "PermutationSampler",
    "RankBatchSampler",
    "RegionImage",
    "Shard",
    "ShardDataset",
    "SlideBag",
    "SpotDataset",
    "add_context",
    "batch_loader",
    "image_levels",
    "is_collection",
    "model_input",
    "patch_loader",
    "read_store",
    "region_images",
    "slide_bags",
    "spot_coordinates_um",
    "spot_patches",
    "table_regions",
    "to_rgb_float",
]
