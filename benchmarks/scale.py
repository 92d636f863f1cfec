"""Scaling out on the CPU: memory against the number of samples, 2 gloo processes against 1, the embedding cache.

Run (about 15 minutes on 2 CPU cores):
    CPNN_DATA_DIR=../shared/data python benchmarks/scale.py --out results/scale
``--sizes 10 40`` for a shorter run.

A synthetic collection written by the script: per sample, an H&E-coloured image stored as zarr
(a grid of ~1,000 spots whose pixels are drawn from each spot's planted composition of 9 cell
types) and counts drawn from the planted compositions x the real NB prototypes of the CID4465
cells (250 genes). For each size (10, 40, 160 samples): embed (hand-crafted features) + fit
(5 epochs, the cpnn head) + predict, as a list of zarr paths, with the peak resident memory of
each step; the slope of the peak in MiB per sample says whether memory grows with the collection.
Then, on 10 samples: the same fit with 2 gloo processes (torchrun) and 1, same seed and global
batch: held-out Spearman of both and the wall-time ratio; and embedding the collection twice
(the second reads the disk cache).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, table

import cpnn as cp

KW = {
    "encoder": "handcrafted", "encoder_kwargs": {"patch_size_um": 32, "patch_px": 32}, "seed": 0,
    "data_kwargs": {"context_um": 0}, "train_kwargs": {"epochs": 5},
}  # fmt: skip
COLOURS = np.array(
    [[200, 60, 70], [70, 190, 80], [80, 90, 210], [220, 180, 60], [150, 60, 180], [60, 180, 190], [230, 120, 40],
     [120, 120, 120], [240, 170, 200]], float)  # fmt: skip


def write_sample(path: Path, protos: np.ndarray, genes: list[str], seed: int, side: int = 32) -> None:
    import anndata as ad
    import dask.array as da
    import pandas as pd
    import spatialdata as sd
    from scipy import sparse
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    rng = np.random.default_rng(seed)
    pitch, patch, k = 40, 32, protos.shape[0]
    size = side * pitch + pitch
    img = np.full((size, size, 3), 245.0, np.float32)
    xs, ys = np.meshgrid(np.arange(side), np.arange(side))
    centres = np.c_[xs.ravel(), ys.ravel()] * pitch + pitch
    comps = rng.dirichlet(np.full(k, 0.5), size=len(centres))
    for (cx, cy), w in zip(centres, comps, strict=True):
        lab = rng.choice(k, size=(patch, patch), p=w)
        img[cy - patch // 2 : cy + patch // 2, cx - patch // 2 : cx + patch // 2] = COLOURS[lab] + rng.normal(
            0, 10, (patch, patch, 3)
        )
    counts = rng.poisson(comps @ protos * 3000)
    name = path.stem
    obs = pd.DataFrame({"region": f"{name}_spots", "spot_id": np.arange(len(centres)), "patient": f"P{seed % 5}"},
                       index=[f"{name}_{i}" for i in range(len(centres))])  # fmt: skip
    table = ad.AnnData(sparse.csr_matrix(counts.astype(np.float32)), obs=obs, var=pd.DataFrame(index=genes))
    table.obsm["truth"] = comps
    table.uns["cpnn_spatial"] = {"spot_diameter_um": 32.0}
    image = da.from_array(np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1), chunks=(3, 512, 512))
    sd.SpatialData(
        images={f"{name}_image": Image2DModel.parse(image, dims=("c", "y", "x"), transformations={name: Identity()})},
        shapes={f"{name}_spots": ShapesModel.parse(centres.astype(float), geometry=0, radius=np.full(len(centres), 16.0),
                                                  index=np.arange(len(centres)), transformations={name: Identity()})},
        tables={"table": TableModel.parse(table, region=f"{name}_spots", region_key="region", instance_key="spot_id")},
    ).write(path)  # fmt: skip


def collection(root: Path, n: int, protos: np.ndarray, genes: list[str]) -> list[Path]:
    paths = []
    for i in range(n):
        p = root / f"sample{i:03d}.zarr"
        if not p.exists():
            write_sample(p, protos, genes, seed=i)
        paths.append(p)
    return paths


def held_out_spearman(paths: list[Path], key: str) -> float:
    import spatialdata as sd

    values = []
    for p in paths:
        t = sd.read_zarr(p)["table"]
        df = cp.tl.evaluate(t, layer=key, groupby=None)
        values.append(df["spearman_mean"].mean())
    return float(np.nanmean(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/scale")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 160])
    ap.add_argument("--data", default=None, help="folder for the synthetic samples (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    root = Path(args.data or tempfile.mkdtemp(prefix="cpnn_scale_"))
    root.mkdir(parents=True, exist_ok=True)
    cp.settings.cachedir = root / "cache"
    import scanpy as sc

    ref = cp.datasets.wu2021_cid4465()
    genes_all = ref.var_names[np.argsort(-np.asarray(ref.X.mean(0)).ravel())[:400]]
    panel = sc.AnnData(np.zeros((1, len(genes_all)), np.float32), var={"x": np.zeros(len(genes_all))})
    panel.var_names = genes_all
    cp.pp.build_prototypes(panel, ref, cell_type_key="celltype_major", min_genes=None, max_genes=None)
    keep = panel.var["cpnn_in_reference"].to_numpy(bool)
    panel = panel[:, keep].copy()
    cp.pp.select_genes(panel, genes=list(panel.var_names[:250]))
    protos = np.asarray(panel.varm["cpnn_prototypes"]).T
    protos = protos / protos.sum(1, keepdims=True)
    genes = list(panel.var_names)
    rows = []
    for n in args.sizes:
        paths = collection(root, n, protos, genes)
        cp.settings.cachedir = root / f"cache_{n}"  # every size embeds its whole collection
        train = [p.stem for p in paths[: int(0.8 * n)]]
        test = [p.stem for p in paths[int(0.8 * n) :]]
        with Peak() as p_embed:
            cp.pp.embed(paths, encoder="handcrafted", patch_size_um=32, patch_px=32)
        with Peak() as p_fit:
            model = cp.tl.fit(
                paths,
                train=train[:-1],
                validation=train[-1:],
                **{**KW, "data_kwargs": {"context_um": 0, "panel": panel}},
            )
        with Peak() as p_pred:
            cp.tl.predict(paths, model, samples=test)
        rows.append({"samples": n, "spots": n * 1024, "embed s": p_embed.seconds, "embed peak MiB": p_embed.added,
                     "fit s": p_fit.seconds, "fit peak MiB": p_fit.added, "predict s": p_pred.seconds,
                     "predict peak MiB": p_pred.added})  # fmt: skip
        print(rows[-1], flush=True)
    sizes = np.array([r["samples"] for r in rows], float)
    slopes = {
        step: float(np.polyfit(sizes, [r[f"{step} peak MiB"] for r in rows], 1)[0]) if len(rows) > 1 else float("nan")
        for step in ("embed", "fit", "predict")
    }
    # the embedding cache: the same collection a second time
    paths = collection(root, args.sizes[0], protos, genes)
    cp.settings.cachedir = root / f"cache_{args.sizes[0]}"
    with Peak() as again:
        cp.pp.embed(paths, encoder="handcrafted", patch_size_um=32, patch_px=32)
    first = rows[0]["embed s"]
    # 2 gloo processes against 1, same seed and global batch, on the first size
    cfg = {"paths": [str(p) for p in paths], "train": [p.stem for p in paths[:-3]], "val": [paths[-3].stem],
           "test": [p.stem for p in paths[-2:]], "panel": str(root / "panel.h5ad")}  # fmt: skip
    panel.write_h5ad(cfg["panel"])
    (root / "ddp.json").write_text(json.dumps(cfg))
    ddp = {}
    for nproc in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": str(2 // nproc), "CPNN_CACHE_DIR": str(root / f"cache_{args.sizes[0]}")}
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", __file__,
                              "--ddp-worker", str(root / "ddp.json"), f"ddp{nproc}"],
                             env=env, capture_output=True, text=True)  # fmt: skip
        ddp[nproc] = {"seconds": time.perf_counter() - t0, "ok": res.returncode == 0}
        if res.returncode != 0:
            print(res.stderr[-3000:])
        else:
            ddp[nproc]["spearman"] = held_out_spearman([Path(p) for p in cfg["paths"][-2:]], f"ddp{nproc}")
    lines = [
        f"# Scaling out ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores)",
        "",
        table(rows),
        "",
        f"Slope of the peak memory: embed {slopes['embed']:.2f}, fit {slopes['fit']:.2f}, predict {slopes['predict']:.2f} MiB per sample.",
        "",
        f"Embedding {args.sizes[0]} samples again (read from the disk cache): {again.seconds:.1f} s against {first:.1f} s "
        f"the first time ({first / max(again.seconds, 1e-9):.0f}x).",
        "",
        table([{"processes": k, **v} for k, v in ddp.items()]),
        "",
        f"Wall-time ratio 2 processes / 1: {ddp[2]['seconds'] / ddp[1]['seconds']:.2f}",
    ]
    text = "\n".join(lines)
    (out / "tables.md").write_text(text)
    print(text)


def ddp_worker(config_path: str, key: str) -> None:
    import anndata as ad

    cfg = json.loads(Path(config_path).read_text())
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    panel = ad.read_h5ad(cfg["panel"])
    model = cp.tl.fit(
        cfg["paths"], train=cfg["train"], validation=cfg["val"],
        **{**KW, "data_kwargs": {"context_um": 0, "panel": panel}, "train_kwargs": {"epochs": 10, "batch_size": 256}},
    )  # fmt: skip
    from cpnn._core import dist

    if dist.is_main():
        cp.tl.predict(cfg["paths"], model, samples=cfg["test"], key_added=key)
    dist.barrier()


if __name__ == "__main__":
    if "--ddp-worker" in sys.argv:
        i = sys.argv.index("--ddp-worker")
        ddp_worker(sys.argv[i + 1], sys.argv[i + 2])
    else:
        main()
