"""A synthetic tissue: each cell type has its own colour and texture; spots carry planted compositions."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

COLOURS = np.array([[200, 60, 70], [70, 190, 80], [80, 90, 210]], dtype=float)


def synthetic_sdata(rng, *, n_side=12, pitch=40, patch=32, n_genes=60, n_types=3, library=2000.0, sections=("S1",)):
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    protos = rng.gamma(0.5, 1.0, size=(n_types, n_genes)) + 0.01
    protos /= protos.sum(1, keepdims=True)
    images, shapes, tables = {}, {}, []
    for s in sections:
        size = n_side * pitch + pitch
        img = np.full((size, size, 3), 245.0)
        xs, ys = np.meshgrid(np.arange(n_side), np.arange(n_side))
        centres = np.c_[xs.ravel(), ys.ravel()] * pitch + pitch
        comps = rng.dirichlet(np.full(n_types, 0.7), size=len(centres))
        for (cx, cy), w in zip(centres, comps, strict=True):
            lab = rng.choice(n_types, size=(patch, patch), p=w)
            block = COLOURS[lab] + rng.normal(0, 12, size=(patch, patch, 3))
            block[..., 0] += np.where(lab == 1, 25 * np.sin(np.arange(patch) / 1.5)[None, :], 0)  # texture
            img[cy - patch // 2 : cy + patch // 2, cx - patch // 2 : cx + patch // 2] = block
        img = np.clip(img, 0, 255).astype(np.uint8)
        # the image lives at half resolution, so the image -> coordinate-system transform is a scale
        small = img[::2, ::2]
        images[f"{s}_hires"] = Image2DModel.parse(
            small.transpose(2, 0, 1), dims=("c", "y", "x"), transformations={s: Scale([2.0, 2.0], axes=("y", "x"))}
        )
        images[f"{s}_full"] = Image2DModel.parse(
            img.transpose(2, 0, 1), dims=("c", "y", "x"), transformations={s: Identity()}
        )
        shapes[f"{s}_spots"] = ShapesModel.parse(
            centres.astype(float),
            geometry=0,
            radius=np.full(len(centres), patch / 2.0),
            index=np.arange(len(centres)),
            transformations={s: Identity()},
        )
        mu = library * comps @ protos
        counts = rng.poisson(mu)
        obs = pd.DataFrame(
            {"section": s, "region": f"{s}_spots", "spot_id": np.arange(len(centres))},
            index=[f"{s}_{i}" for i in range(len(centres))],
        )
        a = ad.AnnData(
            sparse.csr_matrix(counts.astype(np.float32)),
            obs=obs,
            var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
        )
        a.obsm["truth"] = pd.DataFrame(comps, index=obs.index, columns=[f"t{k}" for k in range(n_types)])
        tables.append(a)
    table = ad.concat(tables, merge="same")
    table.obsm["truth"] = pd.concat([t.obsm["truth"] for t in tables])
    table.obs["region"] = pd.Categorical(table.obs["region"])
    table.uns["cpnn_spatial"] = {"spot_diameter_um": 32.0}  # 1 um per pixel of the full image
    table = TableModel.parse(table, region=list(shapes), region_key="region", instance_key="spot_id")
    sdata = sd.SpatialData(images=images, shapes=shapes, tables={"table": table})
    profiles = pd.DataFrame(protos.T, index=table.var_names, columns=[f"t{k}" for k in range(n_types)])
    return sdata, profiles


def synthetic_slides(rng, *, n_slides=40, grid=6, tile=32, n_genes=60, n_types=3, library=2e5):
    """Whole "slides" of planted composition: bulk counts (AnnData) and one SpatialData per slide.

    Each slide's image is a ``grid`` x ``grid`` block of tissue tiles (aligned with a ``tile`` um grid
    at 1 um/px) on white glass; each tile's cells follow a composition drawn around the slide's.
    The bulk is Poisson(library x mean tile composition @ prototypes). Returns the bulk (with the
    planted slide compositions in ``obsm["truth"]``), the slides, the prototypes and the planted
    tile compositions (indexed like the tiles table of :func:`cpnn.pp.tile`).
    """
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity

    protos = rng.gamma(0.5, 1.0, size=(n_types, n_genes)) + 0.01
    protos /= protos.sum(1, keepdims=True)
    slides, truth, counts, tile_truth = {}, [], [], []
    for s in range(n_slides):
        name = f"slide{s}"
        w_slide = rng.dirichlet(np.full(n_types, 0.8))
        size = (grid + 2) * tile  # one tile of glass around the tissue
        img = np.full((size, size, 3), 245.0)
        comps = rng.dirichlet(w_slide * 8 + 0.2, size=grid * grid)
        for (i, j), w in zip(np.ndindex(grid, grid), comps, strict=True):
            lab = rng.choice(n_types, size=(tile, tile), p=w)
            block = COLOURS[lab] + rng.normal(0, 12, size=(tile, tile, 3))
            block[..., 0] += np.where(lab == 1, 25 * np.sin(np.arange(tile) / 1.5)[None, :], 0)
            y, x = (i + 1) * tile, (j + 1) * tile
            img[y : y + tile, x : x + tile] = block
        image = Image2DModel.parse(
            np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1),
            dims=("c", "y", "x"),
            transformations={name: Identity()},
        )
        slides[name] = sd.SpatialData(images={f"{name}_image": image})
        tile_truth.append(
            pd.DataFrame(comps, index=[f"{name}_image_{i + 1}_{j + 1}" for i, j in np.ndindex(grid, grid)])
        )
        mean = comps.mean(0)
        truth.append(mean)
        counts.append(rng.poisson(library * mean @ protos))
    names = list(slides)
    types = [f"t{k}" for k in range(n_types)]
    genes = [f"g{i}" for i in range(n_genes)]
    bulk = ad.AnnData(
        sparse.csr_matrix(np.array(counts, dtype=np.float32)),
        obs=pd.DataFrame(index=names),
        var=pd.DataFrame(index=genes),
    )
    bulk.obsm["truth"] = pd.DataFrame(np.array(truth), index=names, columns=types)
    profiles = pd.DataFrame(protos.T, index=genes, columns=types)
    tiles = pd.concat(tile_truth).set_axis(types, axis=1)
    return bulk, slides, profiles, tiles
