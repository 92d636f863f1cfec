"""cp.tl.predict: apply a trained model to spots, writing expression and composition."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._core import (
    EMBEDDING,
    OFF_SHARE,
    PREDICTION,
    TILES,
    Rows,
    Sample,
    Samples,
    bin_size_um,
    check_int,
    check_number,
    check_obs_mask,
    dense_rows,
    get_table,
    is_spatialdata,
    is_tiles_table,
    layer_matrix,
    model_column,
    predicted_column,
    proportions_key,
    switched_off,
    to_uns,
    uns_cpnn,
    uses_cpu_threads,
    warn_renamed,
    write_composition,
)
from .._errors import CpnnError
from .._settings import settings
from ..data import Collection, slide_bags
from ..pp import cached_embeddings
from ._inputs import bag_embeddings, sample_selection
from ._kinds import PredictRequest, kind_for
from ._levels import SPOT
from ._model import CPNN, model_summary
from ._slides import open_slides

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the docs only
    from spatialdata import SpatialData


@torch.no_grad()
def predict_embeddings(
    model: CPNN, z: np.ndarray, *, device: str = "cpu", batch_size: int = 1024
) -> dict[str, np.ndarray]:
    """Composition weights, gene proportions and (cpnn head) unnormalised expression of embedded patches."""
    head = model.tile_head.to(device).eval()
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(z), batch_size):
        out = head(torch.as_tensor(z[i : i + batch_size], dtype=torch.float32, device=device))
        for k in ("weights", "proportions", "expression", "composition"):
            if k in out:
                outs.setdefault(k, []).append(out[k].float().cpu().numpy())
    head.cpu()
    return {k: np.concatenate(v) for k, v in outs.items()}


@torch.no_grad()
def predict_bag(model: CPNN, z: np.ndarray, *, device: str = "cpu") -> dict[str, np.ndarray]:
    """Slide-level outputs of one bag of tile embeddings (every tile, pooled by the head), plus per-tile weights."""
    head = model.tile_head.to(device).eval()
    bag = torch.as_tensor(z, dtype=torch.float32, device=device)[None]
    out = head.pool(bag, torch.ones(bag.shape[:2], dtype=torch.bool, device=device))
    head.cpu()
    result = {k: out[k].float().cpu().numpy()[0] for k in ("proportions", "weights") if k in out}
    if model.has_composition:
        result["tile_weights"] = predict_embeddings(model, z, device=device)["weights"]
    return result


def composition_share(out: dict[str, np.ndarray]) -> np.ndarray | None:
    """Per gene, the share of the predicted variation that the composition term alone reproduces.

    ``1 - var(log full - log composition) / var(log full)`` across spots, clipped to [0, 1];
    1 for the paper's model (no residual); ``None`` for heads without composition.
    """
    if "weights" not in out:
        return None
    if "composition" not in out:
        return np.ones(out["proportions"].shape[1])
    full = np.log(np.clip(out["proportions"], 1e-12, None))
    diff = full - np.log(np.clip(out["composition"], 1e-12, None))
    var = full.var(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(var > 0, 1.0 - diff.var(0) / var, 1.0)
    return np.clip(share, 0.0, 1.0)


def _write_expression(
    adata: AnnData,
    rows: np.ndarray,
    props: np.ndarray,
    model: CPNN,
    *,
    layer: str | None,
    key_added: str,
    measured_depth: bool = False,
) -> str:
    """Depth-free predicted counts of ``rows`` into ``layers[key_added]`` (tiles table: ``obsm``); returns the slot.

    The counts are at the median training library (the model's expected counts for a spot of
    typical depth), never scaled by the spot's own measured library unless ``measured_depth``
    asks for the extra layer.
    """
    genes = model.genes
    if is_tiles_table(adata) and not set(genes) <= set(adata.var_names):
        # tiles carry no genes: expression at the median training library, as a DataFrame
        key = f"{key_added}_expression"
        frame = pd.DataFrame(np.nan, index=adata.obs_names, columns=genes, dtype=np.float32)
        old = adata.obsm.get(key)
        if isinstance(old, pd.DataFrame) and list(old.columns) == genes:
            frame = old.copy()
        frame.iloc[rows] = (props * model.config.median_library).astype(np.float32)
        adata.obsm[key] = frame
        return f"{key!r} (adata.obsm)"
    gidx = adata.var_names.get_indexer(genes)
    depth = float(model.config.median_library)
    _put_layer(adata, key_added, rows, gidx, (props * depth).astype(np.float32))
    name = measured_depth_key(key_added)
    if not measured_depth:
        if name in adata.layers:  # an earlier model's depth-scaled values of these spots no longer apply
            _put_layer(adata, name, rows, gidx, np.full((len(rows), len(gidx)), np.nan, np.float32))
            logg.warning(
                f"layers[{name!r}] held an earlier prediction of these {len(rows)} spots scaled to their measured depth; "
                "their rows are now NaN there. Pass measured_depth=True to scale this prediction too."
            )
        return f"{key_added!r} (adata.layers)"
    lib = dense_rows(layer_matrix(adata, layer), rows, gidx).sum(axis=1).astype(np.float64)
    lib = np.where(np.isfinite(lib) & (lib > 0), lib, np.nan)  # no measured depth: nothing to scale to
    _put_layer(adata, name, rows, gidx, (props * lib[:, None]).astype(np.float32))
    return f"{key_added!r}, {name!r} (adata.layers)"


def measured_depth_key(key_added: str) -> str:
    """Layer of the predictions scaled to each spot's measured panel library (``measured_depth=True``)."""
    return f"{key_added}_measured_depth"


def _put_layer(adata: AnnData, key: str, rows: np.ndarray, gidx: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` (rows x panel genes) into sparse ``layers[key]``; other rows keep earlier predictions.

    Spots never predicted hold NaN in the panel's columns (the one encoding of "not predicted",
    as in ``obsm``); genes outside the panel hold 0.
    """
    n, g = adata.n_obs, len(gidx)
    new_r, new_c, new_v = np.repeat(rows, g), np.tile(gidx, len(rows)), values.ravel()
    if key in adata.layers:  # earlier predictions (or NaN) of the other spots
        old = sparse.coo_matrix(adata.layers[key])
        keep = ~np.isin(old.row, rows)
        r, c, v = old.row[keep], old.col[keep], old.data[keep].astype(np.float32)
    else:
        others = np.setdiff1d(np.arange(n), rows)
        r, c, v = np.repeat(others, g), np.tile(gidx, len(others)), np.full(len(others) * g, np.nan, np.float32)
    full = sparse.csr_matrix(
        (np.concatenate([v, new_v]), (np.concatenate([r, new_r]), np.concatenate([c, new_c]))),
        shape=(n, adata.n_vars),
        dtype=np.float32,
    )
    adata.layers[key] = full


def _write_weights(adata: AnnData, rows: np.ndarray, weights: np.ndarray, model: CPNN, key: str) -> None:
    """Composition weights into ``obsm[key]`` (group sums there, fine weights in ``key + "_fine"``)."""
    write_composition(adata, rows, weights, model.cell_types, model.groups, key)


def _mark(adata: AnnData, mask: np.ndarray, key_added: str, model: CPNN) -> str:
    """Mark the predicted spots, name the model that predicted each, and keep that model's record."""
    col = predicted_column(key_added)
    prev = adata.obs[col].to_numpy(bool) if col in adata.obs else np.zeros(adata.n_obs, bool)
    adata.obs[col] = prev | mask
    mcol = model_column(key_added)
    ids = adata.obs[mcol].astype(object).to_numpy() if mcol in adata.obs else np.full(adata.n_obs, None, dtype=object)
    ids[mask] = model.fingerprint
    adata.obs[mcol] = pd.Categorical(ids)
    record = uns_cpnn(adata).setdefault("predictions", {}).setdefault(key_added, {})
    models = {k: v for k, v in record.get("models", {}).items() if k in set(adata.obs[mcol].dropna().astype(str))}
    models[model.fingerprint] = to_uns(model_summary(model))
    record["models"] = models
    return col


@uses_cpu_threads
def predict(
    data: AnnData | SpatialData | Samples,
    model: CPNN,
    *,
    regions: Rows = None,
    samples: str | Sequence[str] | None = None,
    key_added: str = PREDICTION,
    layer: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int | None = None,
    image_key: str | None = None,
    spot_diameter_um: float | None = None,
    embedding_key: str = EMBEDDING,
    slides: SpatialData | Mapping[str, Sample] | None = None,
    tiles_key: str = TILES,
    slide_key: str = "slide",
    measured_depth: bool = False,
    table_key: str = "table",
) -> None:
    """Predict the panel's expression and the cell-type composition of spots, tiles or slides.

    Predictions are depth-free: the model's expected counts for a spot of the median training
    library size, whatever the spot's own sequencing depth (a layer scaled by each spot's measured
    depth would carry that depth into every downstream correlation and map). Spots without
    measured counts (a new section) are predicted the same way. The same call predicts every tissue tile of a section
    (``table_key="cpnn_tiles"`` after :func:`cpnn.pp.tile`), giving
    composition and expression maps that also cover tissue without spots.

    Parameters
    ----------
    data
        SpatialData with images (or an AnnData with cached embeddings from the same encoder); a
        collection (``{sample: SpatialData or zarr path}`` or a list of zarr paths), each sample
        predicted in turn from the disk cache of embeddings and written back into its own table
        (its store, for a path). At slide level: the bulk AnnData (obs = slides).
    model
        A model from :func:`cpnn.tl.fit` or :meth:`cpnn.CPNN.load`.
    regions
        The rows of the table to predict: region/section names, a boolean mask or a
        ``(column, values)`` tuple. Default: all (every spot; every tile of a tiles table; at
        slide level, every bulk sample). Before 0.3 it also named a collection's samples (now
        ``samples=``) or a tiles table (now ``table_key=``); both still work for one release, with a
        ``FutureWarning``.
    samples
        For a collection: the samples to predict (names, or a mask over the collection's samples).
        Default: all.
    key_added
        Name of the outputs.
    layer
        Layer holding measured counts, for ``measured_depth`` (default ``X``).
    measured_depth
        Also write ``layers[f"{key_added}_measured_depth"]``: the predictions scaled to each spot's
        measured panel library (NaN without counts), e.g. to compare with raw counts on their scale.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    batch_size
        Embeddings per step of the head (and patches per encoder call when spots are embedded).
    num_workers
        DataLoader workers reading patches (default ``cp.settings.num_workers``).
    image_key
        Force this image element (default: the sharpest image covering the spots).
    spot_diameter_um
        Spot diameter in micrometres, overriding the one derived from the data.
    embedding_key
        ``obsm`` key of the cached embeddings, as in :func:`cpnn.tl.fit`.
    slides
        Slide level: where each bulk sample's tiles are, as in :func:`cpnn.tl.fit`.
    tiles_key
        Slide level: key of the tiles table.
    slide_key
        Slide level: the tiles table's column naming each tile's bulk sample.
    table_key
        Key of the table.

    Returns
    -------
    ``None``. Writes ``layers[key_added]`` (sparse, depth-free predicted counts in the panel's
    columns at the median training library ``uns["cpnn"]["predict"]["library"]``; NaN in the
    panel's columns for spots not predicted, as in ``obsm``; 0 for genes outside the panel),
    ``obsm[f"{key_added}_proportions"]`` (DataFrame spots x cell types, rows sum to 1, NaN for
    spots not predicted; cpnn head only; fractions of cells when the prototypes are average cells
    of their types, as :func:`cpnn.pp.build_prototypes` makes them from a single-cell reference,
    else in the prototypes' units), ``obs[f"{key_added}_predicted"]``,
    ``var[f"{key_added}_composition_share"]`` (cpnn head: per gene, the share of the predicted
    log-expression's variance across the predicted spots that the composition term alone
    reproduces; 1 without a residual path, mean in ``uns["cpnn"]["predict"]["composition_share"]``)
    and ``uns["cpnn"]["predict"]``. A tiles table, which has no genes, gets the expression as the
    DataFrame ``obsm[f"{key_added}_expression"]`` instead of a layer. At slide level the bulk
    AnnData gets the same outputs per sample (proportions = mean over the slide's tiles), and each
    tiles table gets ``obsm[f"{key_added}_proportions"]`` per tile, so that
    :func:`cpnn.pl.proportions` draws the composition over the whole slide.
    """
    if not isinstance(model, CPNN):
        raise CpnnError(f"model must be a cpnn.CPNN (from cp.tl.fit or cp.CPNN.load), got {type(model).__name__}.")
    check_int("batch_size", batch_size)
    if spot_diameter_um is not None:
        check_number("spot_diameter_um", spot_diameter_um, low=0.0, strict=True)
    request = PredictRequest(
        rows=regions, samples=samples, key_added=key_added, layer=layer, device=device, batch_size=batch_size,
        num_workers=num_workers, image_key=image_key, spot_diameter_um=spot_diameter_um, embedding_key=embedding_key,
        slides=slides, tiles_key=tiles_key, slide_key=slide_key, measured_depth=measured_depth, table_key=table_key,
    )  # fmt: skip
    # a slide-level model predicts bulk samples when told where their slides are, and any table's
    # tiles one by one otherwise (its tile head: composition and expression maps over a section)
    level = model.config.level if slides is not None or not model.config.unit.bags else SPOT.name
    kind_for(data, level=level).predict(data, model, request)


def predict_collection(data: Any, model: CPNN, request: PredictRequest) -> None:
    """Each sample of a collection in turn, from the disk cache of embeddings, written back into its own table."""
    samples, rows = request.samples, request.rows
    if rows is not None:
        if samples is not None:
            raise CpnnError("On a collection pass samples= only; regions= selects rows of one table.")
        warn_renamed("predict(regions= on a collection names its samples)", "samples=", since="0.3", removed_in="0.4")
        samples = rows
    coll = Collection(data, table_key=request.table_key)
    one = replace(request, rows=None, samples=None)
    for name in coll.names if samples is None else list(sample_names(coll, samples)):
        # the store's table is read, predicted into and written back under its lock: a second writer
        # waits and then starts from this one's table, so neither result is lost
        with coll.writing(name, f"cp.tl.predict(key_added={request.key_added!r}) into sample {name!r}"):
            sdata = coll.open(name)
            predict_table(sdata, model, one, cache="disk")
            coll.save_table(name, sdata)


def predict_table(data: Any, model: CPNN, request: PredictRequest, *, cache: str = "obsm") -> None:
    """Spots (or tiles) of one table: embed them (``cache``: where the embeddings are kept) and predict."""
    if request.samples is not None:
        raise CpnnError("samples= selects the samples of a collection; for one table select rows with regions=.")
    if request.slides is not None:
        raise CpnnError(f"slides= is for a slide-level model; {model!r} predicts spots. Drop slides=.")
    regions, table_key = request.rows, request.table_key
    start = logg.info(f"predicting with {model!r}")
    if isinstance(regions, str) and is_spatialdata(data) and regions in data.tables and regions != table_key:
        if not is_tiles_table(data.tables[regions]):
            raise CpnnError(f"regions={regions!r} names a table that is not a tiles table; pass table_key= instead.")
        warn_renamed(
            f"predict(regions={regions!r} (a tiles table))", f"table_key={regions!r}", since="0.3", removed_in="0.4"
        )
        table_key, regions = regions, None
    adata = get_table(data, table_key)
    genes = model.genes
    missing = [g for g in genes if g not in adata.var_names]
    if missing and not is_tiles_table(adata):
        raise CpnnError(
            f"{len(missing)} of the model's {len(genes)} genes are not in the table (e.g. {missing[:5]}); "
            "the table must hold the genes the model was trained on."
        )
    mask = row_mask(adata, regions)
    if request.measured_depth:  # checked before anything is written
        layer_matrix(adata, request.layer)
    _check_context(model, table_key)
    dev = settings.resolve_device(request.device)
    z = cached_embeddings(
        data,
        adata,
        model.config.encoder_config,
        model.encoder,
        spots=mask,
        context_um=model.config.data.context_um,
        device=dev,
        batch_size=request.batch_size,
        num_workers=settings.num_workers if request.num_workers is None else request.num_workers,
        image_key=request.image_key,
        spot_diameter_um=request.spot_diameter_um,
        key=request.embedding_key,
        cache=cache,
    )
    predict_rows(adata, model, z, mask, request, device=dev, start=start)


def row_mask(adata: AnnData, rows: Rows) -> np.ndarray:
    """``predict(regions=)``'s selection of ``adata``'s rows as a boolean mask (``None``: every row)."""
    return check_obs_mask(adata, rows, argument="regions")


def predict_rows(
    adata: AnnData,
    model: CPNN,
    z: np.ndarray,
    mask: np.ndarray,
    request: PredictRequest,
    *,
    device: str = "cpu",
    start: object = None,
) -> None:
    """Predict the ``mask`` rows of ``adata`` from their head inputs ``z`` and write every output.

    The last step of every spot-level input kind: expression layer, composition, marks, record.
    """
    key_added, genes = request.key_added, model.genes
    out = predict_embeddings(model, z, device=device)
    rows = np.flatnonzero(mask)
    where = _write_expression(
        adata, rows, out["proportions"], model, layer=request.layer, key_added=key_added,
        measured_depth=request.measured_depth,
    )  # fmt: skip
    col = _mark(adata, mask, key_added, model)
    off: list[str] = []
    if "weights" in out:
        _write_weights(adata, rows, out["weights"], model, proportions_key(key_added))
        off = _warn_switched_off(out["weights"], model)
    share = composition_share(out)
    if share is not None and not is_tiles_table(adata):
        column = np.full(adata.n_vars, np.nan)
        column[adata.var_names.get_indexer(genes)] = share
        adata.var[f"{key_added}_composition_share"] = column
    _record(
        adata,
        model,
        key_added,
        int(mask.sum()),
        level="tile" if is_tiles_table(adata) else "spot",
        share=share,
        off=off,
    )
    logg.info(
        f"    predicted {len(genes)} genes for {int(mask.sum())} {'tiles' if is_tiles_table(adata) else 'spots'}",
        time=start,
        deep=f"added\n    {where}\n    {proportions_key(key_added)!r} (adata.obsm)\n    {col!r} (adata.obs)",
    )


def sample_names(coll: Collection, selection: Any) -> list[str]:
    """The samples a selection names, in collection order."""
    mask = sample_selection(coll.names, selection, "samples")
    return [n for n, m in zip(coll.names, mask, strict=True) if m]


def _warn_switched_off(weights: np.ndarray, model: CPNN) -> list[str]:
    """Warn (and return) the cell types whose weight never exceeds the threshold in ``weights``."""
    off = switched_off(weights, model.cell_types)
    if off:
        logg.warning(
            f"cell type(s) {off} never exceed {OFF_SHARE:.0%} of any predicted spot's composition; if the tissue holds "
            "them, the model has switched them off (see cp.tl.fit's warnings and composition_key=)"
        )
    return off


def _record(
    adata: AnnData, model: CPNN, key_added: str, n: int, *, level: str, share=None, off: list[str] | None = None
) -> None:
    uns_cpnn(adata)["predict"] = {
        "composition_share": float(np.mean(share)) if share is not None else float("nan"),
        "key_added": key_added,
        "head": model.config.head,
        "encoder": model.config.encoder_config["encoder"],
        "level": level,
        "n_spots": n,
        "genes": list(model.genes),
        "cell_types": model.cell_types,
        "types_never_above": list(off or []),
        "never_above_share": OFF_SHARE,
        # the depth of layers[key_added]: expected counts at this panel library, for every spot
        "library": float(model.config.median_library),
    }


def predict_slides(bulk: Any, model: CPNN, request: PredictRequest) -> None:
    """Slide level: bulk expression and mean composition per sample, composition per tile."""
    if request.samples is not None:
        raise CpnnError(
            "samples= selects the samples of a collection; at slide level select bulk samples with regions=."
        )
    if request.slides is None:
        raise CpnnError(f"{model!r} is a slide-level model: pass slides= (where each bulk sample's tiles are).")
    start = logg.info(f"predicting with {model!r}")
    regions, layer, key_added, measured_depth = request.rows, request.layer, request.key_added, request.measured_depth
    tiles_key, slide_key = request.tiles_key, request.slide_key
    if not isinstance(bulk, AnnData):
        raise CpnnError(f"With slides=, data is the bulk AnnData (obs = slides); got {type(bulk).__name__}.")
    missing = [g for g in model.genes if g not in bulk.var_names]
    if missing:
        raise CpnnError(
            f"{len(missing)} of the model's {len(model.genes)} genes are not in the bulk table (e.g. {missing[:5]}); "
            "give the bulk AnnData the model's genes as var_names (measured or not)."
        )
    mask = check_obs_mask(bulk, regions, argument="regions")
    if measured_depth:  # checked before anything is written
        layer_matrix(bulk, layer)
    tile_um = float(model.config.encoder_config["patch_size_um"])
    slides = open_slides(request.slides, [str(n) for n in bulk.obs_names], tiles_key=tiles_key, tile_size_um=tile_um)
    every = slide_bags(bulk, slides, tiles_key=tiles_key, slide_key=slide_key)
    bags = [b for b, m in zip(every, mask, strict=True) if m]
    dev = settings.resolve_device(request.device)
    zs = bag_embeddings(
        bags,
        model.config.encoder_config,
        model.encoder,
        device=dev,
        num_workers=settings.num_workers if request.num_workers is None else request.num_workers,
        image_key=request.image_key,
        key=request.embedding_key,
    )
    outs = [predict_bag(model, z, device=dev) for z in zs]
    rows = np.flatnonzero(mask)
    where = _write_expression(
        bulk,
        rows,
        np.stack([o["proportions"] for o in outs]),
        model,
        layer=layer,
        key_added=key_added,
        measured_depth=measured_depth,
    )
    col = _mark(bulk, mask, key_added, model)
    key = proportions_key(key_added)
    off: list[str] = []
    if model.has_composition:
        _write_weights(bulk, rows, np.stack([o["weights"] for o in outs]), model, key)
        off = _warn_switched_off(np.concatenate([o["tile_weights"] for o in outs]), model)
        for bag, out in zip(bags, outs, strict=True):
            _write_weights(bag.table, np.flatnonzero(bag.mask), out["tile_weights"], model, key)
            _mark(bag.table, bag.mask, key_added, model)
    _record(bulk, model, key_added, len(rows), level="slide", off=off)
    logg.info(
        f"    predicted {len(model.genes)} genes for {len(rows)} slides",
        time=start,
        deep=f"added\n    {where}\n    {key!r} (adata.obsm and each tiles table)\n    {col!r} (adata.obs)",
    )


def _check_context(model: CPNN, table_key: str) -> None:
    """Warn when a model's spatial context was learned on bins of another size than the table's."""
    trained, here, context_um = model.config.bin_um, bin_size_um(table_key), model.config.data.context_um
    if context_um and trained and here and trained != here:
        logg.warning(
            f"the model's spatial context (context_um={context_um:g}) was learned on {trained:g} um bins, "
            f"but table {table_key!r} holds {here:g} um bins: each spot's neighbourhood now averages patches of "
            "another size. Refit with data_kwargs={'context_um': 0} to predict at any bin size."
        )
