"""Public datasets, fetched with pooch into ``cp.settings.datadir`` and verified by SHA-256."""

from ._fetch import fetch, registry
from ._genes import histogene_genes
from ._her2st import HER2ST_IMAGED, WU2021_TO_STEREOSCOPE, her2st, her2st_proportions
from ._hest import hest
from ._visium import visium_breast
from ._wu2021 import wu2021_cid4465, wu2021_profiles

__all__ = [
    "HER2ST_IMAGED",
    "WU2021_TO_STEREOSCOPE",
    "fetch",
    "her2st",
    "her2st_proportions",
    "hest",
    "histogene_genes",
    "registry",
    "visium_breast",
    "wu2021_cid4465",
    "wu2021_profiles",
]
