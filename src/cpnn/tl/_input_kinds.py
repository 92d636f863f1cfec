"""The built-in input kinds: spots of one table, their patches (fine-tuning), slide bags, collections."""

from __future__ import annotations

from typing import Any

from anndata import AnnData

from .._core import get_table, is_spatialdata
from .._errors import CpnnError
from ..data import is_collection
from ._config import FitConfig
from ._inputs import (
    CollectionSplit,
    Inputs,
    Run,
    Split,
    collection_inputs,
    embedding_inputs,
    patch_inputs,
    read_collection,
    read_split,
    slide_inputs,
)
from ._kinds import InputKind, PredictRequest, register_input_kind
from ._model import CPNN
from ._predict import predict_collection, predict_slides, predict_table


def _one_table(data: Any) -> bool:
    return isinstance(data, AnnData) or is_spatialdata(data)


class _OneTable(InputKind):
    """Rows of one AnnData table: spots or tiles (a SpatialData's table, or an AnnData), or bulk samples."""

    def table(self, data: Any, config: FitConfig) -> AnnData:
        return get_table(data, config.data.table_key)

    def read(self, data: Any, config: FitConfig, train: Any, validation: Any, run: Run) -> Split:
        return read_split(run.table, config, train, validation, targets=run.targets)

    def predict(self, data: Any, model: CPNN, request: PredictRequest) -> None:
        predict_table(data, model, request)


@register_input_kind("spots")
class SpotsKind(_OneTable):
    """A frozen encoder's embeddings of one table's spots, cached in ``obsm`` (with a spatial context when asked)."""

    def claims(self, data: Any, *, finetune: bool) -> bool:
        return not finetune and _one_table(data)

    def inputs(self, data: Any, config: FitConfig, split: Split, run: Run) -> Inputs:
        return embedding_inputs(data, config, split, run)


@register_input_kind("patches")
class PatchesKind(_OneTable):
    """Fine-tuning: each spot's image patch, the encoder trained with the head."""

    def claims(self, data: Any, *, finetune: bool) -> bool:
        return finetune and _one_table(data)

    def inputs(self, data: Any, config: FitConfig, split: Split, run: Run) -> Inputs:
        return patch_inputs(data, config, split, run)


@register_input_kind("collection")
class CollectionKind(InputKind):
    """Many samples (``{name: SpatialData or zarr path}`` or paths), streamed from the disk cache, never concatenated."""

    def claims(self, data: Any, *, finetune: bool) -> bool:
        return is_collection(data)  # read_collection refuses finetune=True, naming the fix

    def read(self, data: Any, config: FitConfig, train: Any, validation: Any, run: Run) -> CollectionSplit:
        return read_collection(data, config, train, validation, run)

    def inputs(self, data: Any, config: FitConfig, split: Split, run: Run) -> Inputs:
        return collection_inputs(data, config, split, run)  # type: ignore[arg-type]

    def predict(self, data: Any, model: CPNN, request: PredictRequest) -> None:
        predict_collection(data, model, request)


@register_input_kind("slides")
class SlidesKind(_OneTable):
    """Slide level: the bulk AnnData (obs = slides), each sample the bag of its slide's tissue tiles."""

    level = "slide"

    def claims(self, data: Any, *, finetune: bool) -> bool:
        return True

    def table(self, data: Any, config: FitConfig) -> AnnData:
        if not isinstance(data, AnnData):
            raise CpnnError(f"At slide level data is the bulk AnnData (obs = slides); got {type(data).__name__}.")
        return data

    def inputs(self, data: Any, config: FitConfig, split: Split, run: Run) -> Inputs:
        return slide_inputs(data, config, split, run)

    def predict(self, data: Any, model: CPNN, request: PredictRequest) -> None:
        predict_slides(data, model, request)
