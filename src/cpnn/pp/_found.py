"""What an encoder found in a region (the nuclei encoder's nuclei), as SpatialData points beside the image."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core import EMBEDDING, uns_cpnn
from ..data import RegionImage


def found_element(key: str, what: str, region: str) -> str:
    """Name of the points element holding what embedding ``key``'s encoder found (``what``) in ``region``."""
    return f"cpnn_{what}_{region}" if key == EMBEDDING else f"{key}_{what}_{region}"


def store_found(
    sdata: Any,
    adata: AnnData,
    regions: list[RegionImage],
    found: dict[str, dict[str, np.ndarray]],
    *,
    key: str,
    what: str,
) -> list[str]:
    """Add one points element per region (x, y in the image's pixels, under the image's transformations).

    Each element holds the encoder's table (the nuclei encoder: area, eccentricity, solidity,
    mean haematoxylin and a morphology ``label``); its name is recorded in
    ``uns["cpnn"]["embeddings"][key]["elements"]`` with the region's fingerprint. Returns the names.
    """
    from spatialdata.models import PointsModel
    from spatialdata.transformations import get_transformation

    names = []
    record = uns_cpnn(adata).setdefault("embeddings", {}).setdefault(key, {}).setdefault("elements", {})
    for r in regions:
        if r.region not in found:
            continue
        frame = pd.DataFrame({k: np.asarray(v) for k, v in found[r.region].items()})
        for column in frame.columns:
            if frame[column].dtype == object:
                frame[column] = frame[column].astype("category")
        frame = frame.astype({"x": float, "y": float})  # a region without nuclei still gives float positions
        name = found_element(key, what, r.region)
        transformations = get_transformation(sdata.images[r.image_key], get_all=True)
        sdata.points[name] = PointsModel.parse(
            frame, coordinates={"x": "x", "y": "y"}, transformations=dict(transformations)
        )
        record[r.region] = {"element": name, "source": r.fingerprint}
        names.append(name)
    return names
