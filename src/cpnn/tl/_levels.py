"""What one training sample is: a spot (one patch) or a slide (a bag of tiles).

Everything that differs between the two levels is written here, once, as fields of a
:class:`Level`; the rest of ``tl`` asks the level (``config.unit``) instead of testing its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._errors import CpnnError
from ..models import SlideHead


@dataclass(frozen=True)
class Level:
    """One level of training and prediction.

    Attributes
    ----------
    name
        ``"spot"`` or ``"slide"`` (what ``fit(level=)`` and the stored configuration say).
    samples
        The word for its samples in messages (``"spots"``, ``"slides"``).
    bags
        Each sample is a bag of tile embeddings (pooled by :class:`cpnn.models.SlideHead`).
    preset_overrides
        Preset values the level replaces before the user's options apply (a slide fit takes the
        paper's 8 bags a step and has no spot neighbourhood to give a spatial context).
    """

    name: str
    samples: str
    bags: bool
    preset_overrides: dict[str, Any] = field(default_factory=dict)

    def check(self, *, slides: Any, finetune: bool, head: Any) -> None:
        """Refuse the options of :func:`cpnn.tl.fit` that do not apply at this level, naming the fix."""
        if not self.bags:
            if slides is not None:
                raise CpnnError("slides= is for level='slide'; drop it or pass level='slide'.")
            return
        if slides is None:
            raise CpnnError("level='slide' needs slides=: a dict {sample: SpatialData} or one SpatialData with tiles.")
        if finetune:
            raise CpnnError("finetune=True is spot-level only; slide level trains on cached tile embeddings.")
        if getattr(head, "sample_key", None) is not None:
            raise CpnnError("sample_key is spot level only; slides are the samples at slide level.")

    def wrap(self, head: nn.Module) -> nn.Module:
        """The head as this level trains it (a slide level head pools its tiles)."""
        return SlideHead(head) if self.bags else head


SPOT = Level("spot", "spots", bags=False)
SLIDE = Level("slide", "slides", bags=True, preset_overrides={"context_um": None, "batch_size": 8})
#: The levels by name (how each level's data is read is an input kind's, :data:`cpnn.tl.INPUT_KINDS`).
LEVELS: dict[str, Level] = {level.name: level for level in (SPOT, SLIDE)}


def get_level(level: str | None, *, slides: Any) -> Level:
    """The level a fit asks for (default: slide level when ``slides`` is given, else spot level)."""
    name = level or (SLIDE.name if slides is not None else SPOT.name)
    if name not in LEVELS:
        raise CpnnError(f"level={level!r}; use one of {list(LEVELS)}.")
    return LEVELS[name]
