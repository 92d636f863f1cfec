"""GPU throughput on one CUDA device, in under 5 minutes: what to record in docs/performance.md.

Run on a machine with a GPU (no data files needed: images and counts are made up):
    python benchmarks/gpu.py
Check the script on a CPU (tiny sizes): ``python benchmarks/gpu.py --device cpu --quick``.

Rows: (1) embedding throughput of resnet50 and ViT-B/16 at 224 px, bf16 autocast, channels-last,
through cpnn's whole patch pipeline (a synthetic H&E-coloured zarr image read by workers, crops
resized on the device) next to the bare forward rate of the same model on tensors already on the
device; (2) head training epochs per second on cached embeddings; (3) the same fit launched as
a 1-GPU DistributedDataParallel job (torchrun, NCCL) against the plain one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _util import table

import cpnn as cp
from cpnn._core import autocast
from cpnn.models import build_encoder, encoder_config


def synthetic_sdata(side_spots: int, pitch: int = 170, patch: int = 162, seed: int = 0):
    """An H&E-coloured image on disk (zarr) with a grid of spots 112 um wide at 0.69 um/px."""
    import anndata as ad
    import dask.array as da
    import pandas as pd
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    rng = np.random.default_rng(seed)
    size = side_spots * pitch + pitch
    img = (rng.normal([200, 130, 190], 25, size=(size, size, 3))).clip(0, 255).astype(np.uint8).transpose(2, 0, 1)
    xs, ys = np.meshgrid(np.arange(side_spots), np.arange(side_spots))
    centres = (np.c_[xs.ravel(), ys.ravel()] * pitch + pitch).astype(float)
    n = len(centres)
    obs = pd.DataFrame({"region": "spots", "spot_id": np.arange(n)}, index=[f"s{i}" for i in range(n)])
    table = ad.AnnData(rng.poisson(3.0, size=(n, 50)).astype(np.float32), obs=obs)
    table.uns["cpnn_spatial"] = {"um_per_px": {"spots": 0.69}}
    sdata = sd.SpatialData(
        images={"he": Image2DModel.parse(da.from_array(img, chunks=(3, 1024, 1024)), dims=("c", "y", "x"),
                                         transformations={"g": Identity()})},
        shapes={"spots": ShapesModel.parse(centres, geometry=0, radius=np.full(n, patch / 2.0),
                                           transformations={"g": Identity()})},
        tables={"table": TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")},
    )  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "gpu_bench.zarr"
    sdata.write(path)
    return sd.read_zarr(path)


def bare_rate(model, device: str, n: int, batch: int) -> float:
    x = torch.rand(batch, 3, 224, 224, device=device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(device):
        model(x)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(max(1, n // batch)):
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return max(1, n // batch) * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (to check the script on a CPU)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --device cpu --quick to check the script")
        return
    if args.ddp_worker:
        return head_fit(device, args.quick, ddp=True)
    side = 12 if args.quick else 60  # 144 or 3,600 spots
    sdata = synthetic_sdata(side)
    t = sdata["table"]
    rows = []
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    for arch in ("resnet50", "vit_base_patch16_224"):
        cfg = encoder_config(arch, weights=None, pretrained=False, seed=0, patch_size_um=112, patch_px=224)
        enc = build_encoder(cfg).to(device).eval()
        n_bare = 64 if args.quick else 4096
        rows.append(
            {
                "step": f"{arch}, bare forward (bf16, channels-last, batch 256)",
                "per second": bare_rate(enc, device, n_bare, 32 if args.quick else 256),
            }
        )
        t0 = time.perf_counter()
        cp.pp.embed(sdata, encoder=arch, patch_size_um=112, patch_px=224, batch_size=32 if args.quick else 256,
                    device=device, num_workers=0 if args.quick else args.workers, key_added=f"z_{arch}")  # fmt: skip
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rows.append({"step": f"{arch}, cpnn embed (patches read + resized + encoded, {args.workers} workers)",
                     "per second": t.n_obs / (time.perf_counter() - t0)})  # fmt: skip
    rows.append(
        {
            "step": "cpnn head, epochs/s on cached embeddings (20,000 spots x 1,024 dims x 250 genes; --quick: 2,000 x 64 x 50)",
            "per second": head_fit(device, args.quick),
        }
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=1",
        __file__,
        "--ddp-worker",
        "--device",
        device,
    ]
    if args.quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    rate = [line for line in out.stdout.splitlines() if line.startswith("epochs/s")]
    rows.append({"step": "same head fit as a 1-GPU DDP job (torchrun, NCCL on CUDA)",
                 "per second": float(rate[0].split()[1]) if rate else float("nan")})  # fmt: skip
    print(f"device: {name}; torch {torch.__version__}; {os.cpu_count()} CPU cores")
    print(table(rows))
    if not rate:
        print(out.stderr[-2000:])


def head_fit(device: str, quick: bool, ddp: bool = False):
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    n, d, g, k = (2000, 64, 50, 4) if quick else (20000, 1024, 250, 8)
    comps = rng.dirichlet(np.ones(k), size=n)
    protos = rng.gamma(0.5, 1.0, size=(k, g)) + 0.01
    counts = rng.poisson(comps @ protos * 20).astype(np.float32)
    a = ad.AnnData(counts, var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
    a.obsm["cpnn_embedding"] = (comps @ rng.normal(size=(k, d)) + rng.normal(0, 0.5, size=(n, d))).astype(np.float32)
    a.uns["cpnn"] = {"embeddings": {"cpnn_embedding": {"config": encoder_config(
        "handcrafted", weights=None, pretrained=False, seed=0, patch_size_um=112, patch_px=224), "dim": d}}}  # fmt: skip
    cp.pp.select_genes(a, n_top_genes=g)
    cp.pp.build_prototypes(a, pd.DataFrame(protos.T, index=a.var_names, columns=[f"t{i}" for i in range(k)]))
    epochs = 3 if quick else 20
    t0 = time.perf_counter()
    cp.tl.fit(
        a,
        encoder="handcrafted",
        device=device,
        train_kwargs={"epochs": epochs, "batch_size": 1024},
        data_kwargs={"context_um": 0},
    )
    rate = epochs / (time.perf_counter() - t0)
    if ddp:
        from cpnn._core import dist

        if dist.is_main():
            print(f"epochs/s {rate:.3f}")
    return rate


if __name__ == "__main__":
    main()
