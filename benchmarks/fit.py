"""Speed of the spot-level pipeline: patches, embedding, head epochs on cached embeddings, peak memory.

Run: CPNN_DATA_DIR=../shared/data python benchmarks/fit.py [--spots N] [--workers W]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, max_rss_mib, table

import cpnn as cp
from cpnn.data import PatchDataset, patch_loader, region_images
from cpnn.models import build_encoder, encoder_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spots", type=int, default=1193, help="spots to embed with resnet18")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=200)
    args = ap.parse_args()
    cp.settings.verbosity = 0
    device = cp.settings.resolve_device("auto")
    sdata = cp.datasets.her2st()
    adata = sdata["table"]
    rows = []

    mask = np.zeros(adata.n_obs, bool)
    mask[: args.spots] = True
    regions = region_images(sdata, adata, mask)
    ds = PatchDataset(regions, patch_size_um=112, out_px=224, block_size=64)
    with Peak() as p:
        n = sum(len(ds[i][0]) for i in range(len(ds)))
    rows.append(
        {
            "step": "patch pipeline alone (crop + resize to 224 px)",
            "items": n,
            "seconds": p.seconds,
            "per second": n / p.seconds,
        }
    )

    config = encoder_config("resnet18", weights=None, pretrained=False, seed=0, patch_size_um=112, patch_px=224)
    enc = build_encoder(config).to(device).eval()
    wait = compute = 0.0
    n = 0
    t_all = time.perf_counter()
    t = time.perf_counter()
    with torch.no_grad():
        for idx, patches in patch_loader(ds, num_workers=args.workers):
            t1 = time.perf_counter()
            wait += t1 - t
            enc(patches.to(device))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            compute += t - t1
            n += len(idx)
    total = time.perf_counter() - t_all
    rows.append(
        {
            "step": f"embedding, resnet18 ({device}, {args.workers} workers)",
            "items": n,
            "seconds": total,
            "per second": n / total,
        }
    )
    rows.append(
        {"step": "  share of embedding time waiting for data", "items": n, "seconds": wait, "per second": wait / total}
    )

    # head epochs on cached embeddings: all spots x 250 genes
    cp.pp.select_genes(sdata, n_top_genes=250)
    prof = cp.datasets.wu2021_profiles()
    cp.pp.build_prototypes(sdata, prof, cell_type_map=prof.attrs["cell_type_map"])
    adata.obsm["cpnn_embedding"] = np.random.default_rng(0).normal(size=(adata.n_obs, 512)).astype(np.float32)
    adata.uns["cpnn"]["embeddings"] = {"cpnn_embedding": {"config": config, "dim": 512}}
    with Peak() as p:
        model = cp.tl.fit(adata, epochs=args.epochs, device=device)
    rows.append(
        {
            "step": f"cpnn head, {args.epochs} epochs on cached embeddings ({adata.n_obs} spots x {len(model.genes)} genes)",
            "items": args.epochs,
            "seconds": p.seconds,
            "per second": args.epochs / p.seconds,
        }
    )
    print(table(rows))
    print(
        f"\npeak resident memory of the whole run: {max_rss_mib():.0f} MiB (device: {device}, torch threads: {torch.get_num_threads()})"
    )


if __name__ == "__main__":
    main()
