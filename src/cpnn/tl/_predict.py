"""cp.tl.predict: apply a trained model to spots, writing expression and composition."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._core import check_obs_mask, get_table, uns_cpnn
from .._errors import CpnnError
from .._settings import settings
from ._inputs import spot_embeddings
from ._model import CPNN


@torch.no_grad()
def predict_embeddings(
    model: CPNN, z: np.ndarray, *, device: str = "cpu", batch_size: int = 1024
) -> dict[str, np.ndarray]:
    """Composition weights and gene proportions of embedded spots."""
    head = model.head.to(device).eval()
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(z), batch_size):
        out = head(torch.as_tensor(z[i : i + batch_size], dtype=torch.float32, device=device))
        for k in ("weights", "proportions"):
            if k in out:
                outs.setdefault(k, []).append(out[k].float().cpu().numpy())
    head.cpu()
    return {k: np.concatenate(v) for k, v in outs.items()}


def predict(
    data: AnnData | Any,
    model: CPNN,
    *,
    regions: Any = None,
    key_added: str = "cpnn",
    layer: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int | None = None,
    image_key: str | None = None,
    spot_diameter_um: float | None = None,
    embedding_key: str = "cpnn_embedding",
    table_key: str = "table",
) -> None:
    """Predict the panel's expression and the cell-type composition of spots.

    Works on spots without measured counts (a new section): their predictions are scaled to the
    median training library size.

    Parameters
    ----------
    data
        SpatialData with images (or an AnnData with cached embeddings from the same encoder).
    model
        A model from :func:`cpnn.tl.fit` or :meth:`cpnn.CPNN.load`.
    regions
        Spots to predict: region/section names, a boolean mask or a ``(column, values)`` tuple.
        Default: all spots.
    key_added
        Name of the outputs.
    layer
        Layer holding measured counts, used for each spot's library size (default ``X``).
    device, batch_size, num_workers, image_key, spot_diameter_um, embedding_key
        As in :func:`cpnn.tl.fit`.
    table_key
        Key of the table.

    Returns
    -------
    ``None``. Writes ``layers[key_added]`` (sparse, predicted counts in the panel's columns scaled
    to each spot's measured panel library size, 0 elsewhere and for spots not predicted),
    ``obsm[f"{key_added}_proportions"]`` (DataFrame spots x cell types, rows sum to 1, NaN for
    spots not predicted; cpnn head only), ``obs[f"{key_added}_predicted"]`` and
    ``uns["cpnn"]["predict"]``.
    """
    if not isinstance(model, CPNN):
        raise CpnnError(f"model must be a cpnn.CPNN (from cp.tl.fit or cp.CPNN.load), got {type(model).__name__}.")
    start = logg.info(f"predicting with {model!r}")
    adata = get_table(data, table_key)
    genes = model.genes
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise CpnnError(
            f"{len(missing)} of the model's {len(genes)} genes are not in the table (e.g. {missing[:5]}); "
            "the table must hold the genes the model was trained on."
        )
    mask = check_obs_mask(adata, regions, argument="regions")
    dev = settings.resolve_device(device)
    z = spot_embeddings(
        data,
        adata,
        mask,
        model.config["encoder_config"],
        model.encoder,
        device=dev,
        batch_size=batch_size,
        num_workers=settings.num_workers if num_workers is None else num_workers,
        image_key=image_key,
        spot_diameter_um=spot_diameter_um,
        key=embedding_key,
    )
    out = predict_embeddings(model, z, device=dev)
    gidx = adata.var_names.get_indexer(genes)
    rows = np.flatnonzero(mask)
    X = adata.layers[layer] if layer is not None else adata.X
    measured = X[rows][:, gidx]
    lib = np.asarray(measured.sum(axis=1)).ravel().astype(np.float64)
    lib = np.where(np.isfinite(lib) & (lib > 0), lib, model.config["median_library"])
    pred = (out["proportions"] * lib[:, None]).astype(np.float32)

    full = sparse.csr_matrix(
        (pred.ravel(), (np.repeat(rows, len(gidx)), np.tile(gidx, len(rows)))), shape=(adata.n_obs, adata.n_vars)
    )
    if key_added in adata.layers:  # keep earlier predictions of the other spots
        others = np.ones(adata.n_obs, np.float32)
        others[rows] = 0.0
        full = sparse.diags(others) @ sparse.csr_matrix(adata.layers[key_added], dtype=np.float32) + full
    adata.layers[key_added] = full.tocsr()
    col = f"{key_added}_predicted"
    prev = adata.obs[col].to_numpy(bool) if col in adata.obs else np.zeros(adata.n_obs, bool)
    adata.obs[col] = prev | mask
    if "weights" in out:
        key = f"{key_added}_proportions"
        props = pd.DataFrame(np.nan, index=adata.obs_names, columns=model.cell_types, dtype=np.float32)
        if (
            key in adata.obsm
            and isinstance(adata.obsm[key], pd.DataFrame)
            and list(adata.obsm[key].columns) == model.cell_types
        ):
            props = adata.obsm[key].copy()
        props.iloc[rows] = out["weights"]
        adata.obsm[key] = props
    uns_cpnn(adata)["predict"] = {
        "key_added": key_added,
        "head": model.config["head"],
        "encoder": model.config["encoder_config"]["encoder"],
        "n_spots": int(mask.sum()),
        "genes": list(genes),
        "cell_types": model.cell_types,
    }
    logg.info(
        f"    predicted {len(genes)} genes for {int(mask.sum())} spots",
        time=start,
        deep=f"added\n    {key_added!r} (adata.layers)\n    {key_added + '_proportions'!r} (adata.obsm)\n    {col!r} (adata.obs)",
    )
