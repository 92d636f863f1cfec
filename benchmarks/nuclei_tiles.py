"""The nuclei encoder segmenting each region once against each patch alone: dense tiles, HER2ST spots, 60,000 tiles.

Run (about 10 minutes on 2 CPU cores):
    CPNN_DATA_DIR=../shared/data python benchmarks/nuclei_tiles.py [--big 60000]

Rows, each one ``cp.pp.embed`` call with 112 um patches (the default) and cpnn's thread policy:
400 neighbouring 16 um tiles in the middle of B4 (``cp.pp.tile(tile_size_um=16)``, the Visium HD
case: each patch overlaps ~50 others) with ``handcrafted``, ``nuclei`` segmenting each patch alone
(``encoder_kwargs={"segment": "patch"}``, the 0.4 behaviour) and ``nuclei`` (``"auto"``: once);
the 1,193 HER2ST spots (112 um patches at 200 um pitch, which ``"auto"`` segments alone); and the
first ``--big`` 16 um tiles of the six sections (time, peak memory). Then how the features of the
400 dense tiles differ between segmenting once and each patch alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, table

import cpnn as cp
from cpnn.models.encoders._nuclei import MORPHOMETRY


def embed(sdata, mask, *, encoder: str, table_key: str, kwargs: dict | None = None, key: str) -> Peak:
    with Peak() as peak:
        cp.pp.embed(sdata, encoder=encoder, encoder_kwargs=kwargs, table_key=table_key, spots=mask, key_added=key)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=60000, help="tiles of the large row (0: skip it)")
    args = parser.parse_args()
    cp.settings.progress_bar = False
    sdata = cp.datasets.her2st()
    cp.pp.tile(sdata, tile_size_um=16)
    tiles = sdata["cpnn_tiles"]
    b4 = np.flatnonzero(tiles.obs["region"].astype(str).to_numpy() == "cpnn_tiles_B4_image")
    rc = tiles.obs[["row", "col"]].to_numpy()[b4]
    dense = np.zeros(tiles.n_obs, bool)
    dense[b4[np.argsort(np.abs(rc - np.median(rc, 0)).max(1), kind="stable")[:400]]] = True
    spots = np.ones(sdata["table"].n_obs, bool)
    rows = []

    def row(what, n, encoder, mode, peak, base=None):
        rows.append({
            "tiles or spots": what, "n": n, "encoder": encoder, "segment": mode, "seconds": f"{peak.seconds:.2f}",
            "per second": f"{n / peak.seconds:.0f}", "x hand-crafted": "" if base is None else f"{peak.seconds / base:.2f}",
            "peak MiB above start": f"{peak.added:.0f}",
        })  # fmt: skip

    embed(sdata, dense, encoder="handcrafted", table_key="cpnn_tiles", key="warm")  # decode the chunks once
    hand = embed(sdata, dense, encoder="handcrafted", table_key="cpnn_tiles", key="hand")
    row("400 dense 16 um tiles (B4)", 400, "handcrafted", "", hand)
    alone = embed(sdata, dense, encoder="nuclei", table_key="cpnn_tiles", kwargs={"segment": "patch"}, key="alone")
    row("400 dense 16 um tiles (B4)", 400, "nuclei", "each patch", alone, hand.seconds)
    once = embed(sdata, dense, encoder="nuclei", table_key="cpnn_tiles", key="once")
    row("400 dense 16 um tiles (B4)", 400, "nuclei", "auto (once)", once, hand.seconds)
    hand_spots = embed(sdata, spots, encoder="handcrafted", table_key="table", key="hand")
    row("1,193 HER2ST spots", len(spots), "handcrafted", "", hand_spots)
    nuc_spots = embed(sdata, spots, encoder="nuclei", table_key="table", key="nuclei")
    row("1,193 HER2ST spots", len(spots), "nuclei", "auto (each patch)", nuc_spots, hand_spots.seconds)
    if args.big:
        big = np.zeros(tiles.n_obs, bool)
        big[: args.big] = True
        hand_big = embed(sdata, big, encoder="handcrafted", table_key="cpnn_tiles", key="hand_big")
        row(f"{args.big:,} 16 um tiles", args.big, "handcrafted", "", hand_big)
        nuc_big = embed(sdata, big, encoder="nuclei", table_key="cpnn_tiles", key="nuclei_big")
        row(f"{args.big:,} 16 um tiles", args.big, "nuclei", "auto (once)", nuc_big, hand_big.seconds)
    print(table(rows))

    a, b = tiles.obsm["alone"][dense], tiles.obsm["once"][dense]
    names = [*MORPHOMETRY, *(f"lbp_{k}" for k in range(10))]
    diff = []
    for i, name in enumerate(names):
        r = np.corrcoef(a[:, i], b[:, i])[0, 1] if a[:, i].std() > 0 and b[:, i].std() > 0 else float("nan")
        diff.append({
            "feature": name, "each patch (mean)": f"{a[:, i].mean():.4f}", "once (mean)": f"{b[:, i].mean():.4f}",
            "mean abs difference": f"{np.abs(a[:, i] - b[:, i]).mean():.4f}", "r": f"{r:.3f}",
        })  # fmt: skip
    print("\nThe 400 dense tiles' nuclear features, once vs each patch alone (colour statistics identical):\n")
    print(table(diff))


if __name__ == "__main__":
    main()
