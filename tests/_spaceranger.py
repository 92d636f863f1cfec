"""A small but realistic Space Ranger output folder, written on the fly, with planted compositions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ._synthetic import COLOURS

#: Visium geometry at 1 um per full-resolution pixel: 100 um between spot centres, 55 um spots.
PITCH_PX = 100
SPOT_PX = 55.0


def _paint(rng, comps: np.ndarray, centres: np.ndarray, size: tuple[int, int], tile: int) -> np.ndarray:
    """Background glass, and around each spot a tile whose pixels are coloured by cell type."""
    img = np.full((*size, 3), 240.0)
    for (cx, cy), w in zip(centres, comps, strict=True):
        lab = rng.choice(len(w), size=(tile, tile), p=w)
        block = COLOURS[lab] + rng.normal(0, 12, size=(tile, tile, 3))
        block[..., 0] += np.where(lab == 1, 25 * np.sin(np.arange(tile) / 1.5)[None, :], 0)
        img[cy - tile // 2 : cy + tile // 2, cx - tile // 2 : cx + tile // 2] = block
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_h5(path: Path, counts: np.ndarray, barcodes: list[str], ids: list[str], names: list[str], lib: str) -> None:
    """The 10x HDF5 feature-barcode matrix (v3 layout: CSC, features as rows)."""
    import h5py
    from scipy import sparse

    m = sparse.csc_matrix(counts.T.astype(np.int32))  # genes x barcodes, column = barcode
    with h5py.File(path, "w") as f:
        f.attrs["library_ids"] = np.array([lib.encode()])
        f.attrs["chemistry_description"] = b"Spatial 3' v1"
        f.attrs["software_version"] = b"spaceranger-2.0.0"
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array([b.encode() for b in barcodes]))
        g.create_dataset("data", data=m.data)
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        feat = g.create_group("features")
        feat.create_dataset("id", data=np.array([i.encode() for i in ids]))
        feat.create_dataset("name", data=np.array([n.encode() for n in names]))
        feat.create_dataset("feature_type", data=np.array([b"Gene Expression"] * len(ids)))
        feat.create_dataset("genome", data=np.array([b"GRCh38"] * len(ids)))
        feat.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def write_spaceranger(
    folder: Path,
    rng: np.random.Generator,
    protos: np.ndarray,
    *,
    library_id: str = "sample1",
    n_side: int = 10,
    positions: str = "v1",
    full_image: bool = True,
    hires_scale: float = 0.5,
    library: float = 3000.0,
) -> tuple[Path, pd.DataFrame]:
    """Write ``folder`` as Space Ranger does; return it and the planted compositions (barcodes x types).

    Genes are ``ENSG...`` IDs with symbols ``GENE{i}``. ``positions`` picks the v1 headerless
    ``tissue_positions_list.csv`` or the v2 ``tissue_positions.csv`` with a header.
    """
    folder = Path(folder)
    (folder / "spatial").mkdir(parents=True, exist_ok=True)
    n_types, n_genes = protos.shape
    rows, cols = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    centres = np.c_[cols.ravel(), rows.ravel()] * PITCH_PX + PITCH_PX  # (x, y) in full-resolution pixels
    size = (n_side * PITCH_PX + PITCH_PX, n_side * PITCH_PX + PITCH_PX)
    comps = rng.dirichlet(np.full(n_types, 0.7), size=len(centres))
    img = _paint(rng, comps, centres, size, tile=90)
    barcodes = [f"{''.join(rng.choice(list('ACGT'), 16))}-1" for _ in range(len(centres))]
    counts = rng.poisson(library * comps @ protos)
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    names = [f"GENE{i}" for i in range(n_genes)]
    prefix = f"{library_id}_"
    _write_h5(folder / f"{prefix}filtered_feature_bc_matrix.h5", counts, barcodes, ids, names, library_id)
    pos = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": rows.ravel(),
            "array_col": cols.ravel() * 2 + rows.ravel() % 2,
            "pxl_row_in_fullres": centres[:, 1],
            "pxl_col_in_fullres": centres[:, 0],
        }
    )
    if positions == "v1":
        pos.to_csv(folder / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    else:
        pos.to_csv(folder / "spatial" / "tissue_positions.csv", header=True, index=False)
    scalefactors = {
        "spot_diameter_fullres": SPOT_PX,
        "fiducial_diameter_fullres": SPOT_PX * 1.6,
        "tissue_hires_scalef": hires_scale,
        "tissue_lowres_scalef": hires_scale / 5,
    }
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    pil = Image.fromarray(img)
    for name, scale in (("tissue_hires_image.png", hires_scale), ("tissue_lowres_image.png", hires_scale / 5)):
        pil.resize((round(size[1] * scale), round(size[0] * scale)), Image.BILINEAR).save(folder / "spatial" / name)
    if full_image:
        pil.save(folder / "image.tif")
    truth = pd.DataFrame(comps, index=barcodes, columns=[f"t{k}" for k in range(n_types)])
    return folder, truth
