"""What the image readers (``cpnn.io``) and the spot-to-image code (``cpnn.data``) share."""

from __future__ import annotations

from typing import Any

#: Key of cpnn's entry in ``SpatialData.attrs`` (e.g. ``{"um_per_px": {image_key: float}}`` from :func:`cpnn.io.read_wsi`).
ATTRS_KEY = "cpnn"


def image_levels(element: Any) -> list[Any]:
    """The (c, y, x) arrays of an image element, finest first (one entry for a single-scale image)."""
    if hasattr(element, "children") and len(getattr(element, "children", {})):
        levels = []
        for name in element.children:
            node = element[name]
            arr = next(iter(node.data_vars.values())) if hasattr(node, "data_vars") else node
            levels.append(arr)
        return sorted(levels, key=lambda a: -int(a.shape[-1]))
    return [element]
