"""The nuclei encoder: nuclear morphometry per patch, measured over whole regions where patches overlap."""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..._errors import CpnnError
from ._base import Encoder
from ._handcrafted import HandcraftedEncoder
from ._nuclei import MORPHOMETRY, NUCLEI_UM_PER_PX, morphology_labels, morphometry
from ._nuclei_regions import SEGMENT_MODES, region_nuclei

if TYPE_CHECKING:  # pragma: no cover
    from ...data._windows import RegionReader


class NucleiEncoder(Encoder):
    """Nuclear morphometry and texture per patch, plus the hand-crafted colour/texture statistics; no weights.

    Patches are read at :data:`NUCLEI_UM_PER_PX` (224 px for the default 112 um patch). Features:
    :data:`MORPHOMETRY` (count, density per mm^2 of tissue, quantiles of nuclear area, eccentricity,
    solidity and haematoxylin, nearest-neighbour distances, shares of small-round-dark, elongated and
    large nuclei, nuclear area and tissue fractions), a 10-bin uniform local-binary-pattern histogram
    of the haematoxylin channel, and :class:`HandcraftedEncoder`'s 42 statistics. The per-patch
    nucleus count is written to ``obs["cpnn_n_nuclei"]`` when spots are embedded.

    Embedding measures a region at once (:meth:`measure_region`): where the patches overlap (dense
    tiles, Visium HD bins) the tissue is segmented once and every patch is measured from the
    nucleus table (:mod:`cpnn.models.encoders._nuclei_regions`); where they barely overlap (ST's
    spots) each patch is segmented alone, with ``forward``'s values. ``segment`` (``"auto"``,
    ``"once"``, ``"patch"``; ``encoder_kwargs={"segment": ...}``) forces one. The nuclei found
    become the points element ``cpnn_nuclei_<region>`` of :func:`cpnn.pp.embed`'s SpatialData.
    """

    trainable = False
    seeded = False
    input_um_per_px: ClassVar[float | None] = NUCLEI_UM_PER_PX
    obs_features: ClassVar[dict[str, tuple[int, float]]] = {"n_nuclei": (0, 100.0)}  # counts are in hundreds
    # a nucleus (5-10 um) spans a few pixels of a coarser image: merged, missed or not segmented at all
    coarsest_image_um_per_px: ClassVar[float | None] = 1.0
    region_dim: ClassVar[int] = len(MORPHOMETRY) + 10
    region_element: ClassVar[str] = "nuclei"
    #: Version of the features' definitions, part of the embedding's identity (2: segmented once per region).
    feature_version: ClassVar[int | None] = 2

    def __init__(self, *, um_per_px: float = NUCLEI_UM_PER_PX, segment: str = "auto") -> None:
        super().__init__()
        if not 0 < um_per_px <= 1.0:
            raise CpnnError(
                f"encoder='nuclei' reads patches at {um_per_px:.2f} um per pixel; nuclei need at least 1 um per "
                "pixel: raise patch_px= (or leave it unset)."
            )
        if segment not in SEGMENT_MODES:
            raise CpnnError(
                f"encoder_kwargs={{'segment': {segment!r}}}; use one of {SEGMENT_MODES} ('auto' segments the "
                "tissue once where the patches overlap, each patch alone where they do not)."
            )
        self.pixel_um = float(um_per_px)
        self.segment = segment
        self.colour = HandcraftedEncoder()
        self.out_dim = self.region_dim + self.colour.out_dim

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NucleiEncoder:
        """The scale follows from the patch geometry (``patch_size_um / patch_px``); there are no weights."""
        if config.get("weights") or config.get("pretrained"):
            raise CpnnError("encoder='nuclei' has no weights; drop encoder_weights=/pretrained=.")
        kwargs = dict(config.get("kwargs") or {})
        segment = kwargs.pop("segment", "auto")
        if kwargs:
            raise CpnnError(
                f"encoder='nuclei' takes only encoder_kwargs 'segment' (and 'stain'), got {sorted(kwargs)}."
            )
        size, px = config.get("patch_size_um"), config.get("patch_px")
        scale = {"um_per_px": float(size) / float(px)} if size and px else {}
        return cls(**scale, segment=str(segment))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch of patches (N, 3, H, W) in [0, 1], each patch segmented alone."""
        x = x.float()
        rgb = x.permute(0, 2, 3, 1).cpu().numpy().astype(np.float64)
        threads = max(2, min(len(rgb), os.cpu_count() or 1))
        if len(rgb) > 1:
            with ThreadPoolExecutor(threads) as pool:
                morph = list(pool.map(lambda p: morphometry(p, self.pixel_um), rgb))
        else:
            morph = [morphometry(p, self.pixel_um) for p in rgb]
        cells = torch.as_tensor(np.stack(morph), dtype=torch.float32, device=x.device)
        return torch.cat([cells, self.colour(x)], dim=1)

    def measure_region(self, reader: RegionReader) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Nuclear features of a region's spots and its nuclei, the tissue segmented once where patches overlap.

        See :mod:`cpnn.models.encoders._nuclei_regions`; ``segment`` (``encoder_kwargs``) forces
        ``"once"`` or ``"patch"``.
        """
        feats, nuclei, _ = region_nuclei(reader, self.pixel_um, segment=self.segment)
        nuclei["label"] = morphology_labels(nuclei)
        return feats, nuclei

    def patch_part(self, x: torch.Tensor) -> torch.Tensor:
        """The hand-crafted colour and texture statistics of a batch of patches."""
        return self.colour(x.float())
