"""Speed of the spot-level pipeline: patches, embedding, head epochs on cached embeddings, peak memory.

Run: CPNN_DATA_DIR=../shared/data python benchmarks/fit.py [--spots N] [--workers W]

Rows side by side, on the same spots: cpnn's patch pipeline (crops delivered to the device at their
native size, and with the resize to 224 px done on the device) with 0 and ``--workers`` workers,
spatialdata's ``ImageTilesDataset`` producing the same 224 px patches, embedding throughput of
resnet18, ViT-S/16 and ViT-B/16 (random weights: the same compute as pretrained ones), of the
weight-free ``handcrafted`` and ``nuclei`` encoders, and head epochs on cached embeddings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, max_rss_mib, table

import cpnn as cp
from cpnn._core import autocast
from cpnn.data import PatchDataset, model_input, patch_loader, region_images
from cpnn.models import build_encoder, encoder_config


def _tiles_dataset(sdata, sections: list[str], um_per_px: dict, out_px: int):
    """spatialdata's ImageTilesDataset over the same spots (one per section: it needs one region per table)."""
    import torch.nn.functional as F
    from spatialdata.dataloader import ImageTilesDataset

    def to_input(item):
        img = torch.as_tensor(np.asarray(item[0].data)).float()[None] / 255.0
        return F.interpolate(img, size=(out_px, out_px), mode="bilinear", antialias=True)[0]

    parts = []
    for s in sections:
        sub = sdata.subset([f"{s}_image", f"{s}_spots"], filter_tables=True)
        tab = sub["table"]
        tab.obs["region"] = tab.obs["region"].cat.remove_unused_categories()
        tab.uns["spatialdata_attrs"]["region"] = [f"{s}_spots"]
        parts.append(
            ImageTilesDataset(
                sub,
                {f"{s}_spots": f"{s}_image"},
                {f"{s}_spots": s},
                tile_dim_in_units=112 / um_per_px[f"{s}_spots"],
                rasterize=False,
                return_annotations="section",
                table_name="table",
                transform=to_input,
            )
        )
    return torch.utils.data.ConcatDataset(parts)


def _sync_dask(_: int) -> None:
    import dask

    dask.config.set(scheduler="synchronous")


def _rate(step: str, n: int, seconds: float) -> dict:
    return {"step": step, "items": n, "seconds": seconds, "per second": n / seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spots", type=int, default=1193, help="spots read by the patch pipeline")
    ap.add_argument("--embed-spots", type=int, default=64, help="spots embedded by each timm encoder")
    ap.add_argument("--tiles-spots", type=int, default=240, help="spots read through ImageTilesDataset")
    ap.add_argument("--nuclei-spots", type=int, default=240, help="spots embedded by handcrafted and nuclei")
    ap.add_argument("--workers", type=int, default=2)
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
    for workers in sorted({0, args.workers}):
        for resize in (False, True):
            ds = PatchDataset(regions, patch_size_um=112, out_px=224, block_size=64)
            with Peak() as p:
                n = 0
                for _idx, patches in patch_loader(ds, num_workers=workers, pin_memory=device.startswith("cuda")):
                    x = model_input(patches, 224, device) if resize else patches.to(device, non_blocking=True)
                    n += len(x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
            what = "crop + resize to 224 px on the device" if resize else "crops delivered to the device"
            rows.append(_rate(f"cpnn patches, {what} ({device}, {workers} workers)", n, p.seconds))
    sections = list(dict.fromkeys(adata.obs["section"].astype(str)))
    tiles = _tiles_dataset(sdata, sections, adata.uns["cpnn_spatial"]["um_per_px"], 224)
    picks = torch.utils.data.Subset(tiles, range(min(args.tiles_spots, len(tiles))))
    for workers in sorted({0, args.workers}):
        # dask's threads in forked workers deadlock without a synchronous scheduler (docs/performance.md)
        loader = torch.utils.data.DataLoader(
            picks, batch_size=None, num_workers=workers, worker_init_fn=_sync_dask if workers else None
        )
        with Peak() as p:
            n = sum(1 for _ in loader)
        rows.append(_rate(f"spatialdata ImageTilesDataset, same spots, 224 px ({workers} workers)", n, p.seconds))

    config = encoder_config("resnet18", weights=None, pretrained=False, seed=0, patch_size_um=112, patch_px=224)
    for name in ("resnet18", "vit_small_patch16_224", "vit_base_patch16_224"):
        cfg = encoder_config(name, weights=None, pretrained=False, seed=0, patch_size_um=112, patch_px=224)
        model = build_encoder(cfg).to(device).eval()
        sub = np.zeros(adata.n_obs, bool)
        sub[: args.embed_spots] = True
        ds = PatchDataset(region_images(sdata, adata, sub), patch_size_um=112, out_px=224, block_size=32)
        with torch.no_grad(), Peak() as p:
            n = 0
            for idx, patches in patch_loader(ds, num_workers=0):
                with autocast(device):
                    model(model_input(patches, 224, device))
                n += len(idx)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        rows.append(_rate(f"embedding, {name} at 224 px, random weights ({device}, fp32)", n, p.seconds))

    # the weight-free encoders at their own input size (nuclei: 0.5 um per pixel, measured in a thread pool)
    for name in ("handcrafted", "nuclei"):
        cfg = encoder_config(name, weights=None, pretrained=False, seed=0, patch_size_um=112, patch_px=None)
        model, px = build_encoder(cfg).eval(), cfg["patch_px"]
        sub = np.zeros(adata.n_obs, bool)
        sub[: args.nuclei_spots] = True
        ds = PatchDataset(region_images(sdata, adata, sub), patch_size_um=112, out_px=px, block_size=32)
        with torch.no_grad(), Peak() as p:
            n = 0
            for idx, patches in patch_loader(ds, num_workers=0):
                model(model_input(patches, px, "cpu"))
                n += len(idx)
        threads = f"{max(2, os.cpu_count() or 1)} threads" if name == "nuclei" else "1 thread"
        rows.append(_rate(f"embedding, {name} at {px} px (cpu, {threads})", n, p.seconds))

    # head epochs on cached embeddings: all spots x 250 genes
    cp.pp.select_genes(sdata, n_top_genes=250)
    prof = cp.datasets.wu2021_profiles()
    cp.pp.build_prototypes(sdata, prof, cell_type_map=prof.attrs["cell_type_map"])
    adata.obsm["cpnn_embedding"] = np.random.default_rng(0).normal(size=(adata.n_obs, 512)).astype(np.float32)
    adata.uns["cpnn"]["embeddings"] = {"cpnn_embedding": {"config": config, "dim": 512}}
    with Peak() as p:
        model = cp.tl.fit(adata, train_kwargs={"epochs": args.epochs}, device=device)
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
