"""Input kinds: how one kind of data is read for :func:`cpnn.tl.fit` and predicted by :func:`cpnn.tl.predict`.

A kind owns its checks, its two sides of the split, its training datasets and its prediction.
``fit`` and ``predict`` ask the registry which kind reads the data they were given
(:func:`kind_for`); they never test the data's type themselves. Register one from outside with
:func:`register_input_kind` (docs/architecture.md, "How to add an input kind").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from anndata import AnnData

from .._core import EMBEDDING, PREDICTION, TILES
from .._errors import CpnnError
from ..models import Registry
from ._inputs import Inputs, Run, Split

if TYPE_CHECKING:  # pragma: no cover
    from ._config import FitConfig
    from ._model import CPNN


@dataclass(frozen=True)
class PredictRequest:
    """The options of one :func:`cpnn.tl.predict` call, as its input kind reads them."""

    rows: Any = None
    samples: Any = None
    key_added: str = PREDICTION
    layer: str | None = None
    device: str = "auto"
    batch_size: int = 64
    num_workers: int | None = None
    image_key: str | None = None
    spot_diameter_um: float | None = None
    embedding_key: str = EMBEDDING
    slides: Any = None
    tiles_key: str = TILES
    slide_key: str = "slide"
    measured_depth: bool = False
    table_key: str = "table"


class InputKind:
    """The protocol of an input kind: subclass it and register it with :func:`register_input_kind`.

    Attributes
    ----------
    level
        The level it trains (``"spot"``: a row is one patch; ``"slide"``: a bag of tiles).
    """

    name: ClassVar[str] = ""
    level: ClassVar[str] = "spot"

    def claims(self, data: Any, *, finetune: bool) -> bool:
        """Whether this kind reads ``data`` (at its level; ``finetune``: the encoder trains too)."""
        raise NotImplementedError

    def table(self, data: Any, config: FitConfig) -> AnnData | None:
        """The table whose counts (and composition targets) the fit reads, or ``None`` when the kind reads many."""
        return None

    def read(self, data: Any, config: FitConfig, train: Any, validation: Any, run: Run) -> Split:
        """The two sides of the split: masks, panel counts, prototypes, reference compositions."""
        raise NotImplementedError

    def inputs(self, data: Any, config: FitConfig, split: Split, run: Run) -> Inputs:
        """The training and validation datasets, the head's input width and the module trained before it."""
        raise NotImplementedError

    def predict(self, data: Any, model: CPNN, request: PredictRequest) -> None:
        """Predict ``data`` with ``model`` and write the results (see :func:`cpnn.tl.predict`)."""
        raise CpnnError(f"The {self.name!r} input kind cannot predict; predict the data it was made from.")


#: Input kinds by name, asked in reverse order of registration (a kind registered later claims first).
INPUT_KINDS: Registry[type[InputKind]] = Registry("input kind", "kind", register="cpnn.tl.register_input_kind")
register_input_kind = INPUT_KINDS.register


def kind_for(data: object, *, level: str, finetune: bool = False) -> InputKind:
    """The registered input kind that reads ``data`` at ``level`` (the latest registered first)."""
    for name in reversed(INPUT_KINDS.names()):
        kind = INPUT_KINDS.get(name)()
        if kind.level == level and kind.claims(data, finetune=finetune):
            return kind
    raise CpnnError(
        f"No input kind reads a {type(data).__name__} at level={level!r} (kinds: {INPUT_KINDS.names()}); pass a "
        "SpatialData, an AnnData, a collection of samples, or register a kind with cp.tl.register_input_kind."
    )
