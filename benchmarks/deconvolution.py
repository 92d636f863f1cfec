"""Deconvolution at Visium HD scale: speed and memory vs spots, agreement on all 36 HER2ST sections.

Run (about 15 minutes on 2 CPU cores):
    CPNN_DATA_DIR=../shared/data python benchmarks/deconvolution.py
    CPNN_DATA_DIR=../shared/data python benchmarks/deconvolution.py --sizes 1000 10000   # quick
    CPNN_DATA_DIR=../shared/data python benchmarks/deconvolution.py --peer              # + scvi-tools

Part 1, agreement: ``cp.pp.deconvolve(method="nb")`` on every spot of the 36 HER2ST sections
(13,620 spots, CID4465 NB prototypes of ``celltype_major``) against the HER2ST authors'
stereoscope proportions: Pearson over spots per cell type (cpnn's types summed to stereoscope's)
and the mean over types, for several ``shared_spots`` (the random spots the shared per-gene
parameters are fitted on) and seeds, and with all spots in one chunk (the chunked result must
match it).

Part 2, scale: synthetic 16 um bins drawn from the HER2ST spots (rows resampled with
replacement, counts thinned binomially to 1/10, about what a 16 um bin holds next to a 55 um
spot), sparse, from 1,000 to 150,000 bins: wall seconds, spots/s, CPU seconds and the peak
resident memory added by the call (sampled every 20 ms), the table itself excluded.

``--peer``: scvi-tools' ``RNAStereoscope`` + ``SpatialStereoscope`` (API defaults) on the same
spots of the six imaged sections, the same genes and the same CID4465 cells, side by side with
cpnn on them (needs ``pip install scvi-tools``; not a cpnn dependency).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _util import Peak, table
from her2st import to_stereoscope

import cpnn as cp
from cpnn._core import columnwise_pearson
from cpnn.datasets._her2st import HER2ST_SECTIONS


def agreement(props: pd.DataFrame, stereo: pd.DataFrame) -> dict[str, float]:
    """Per stereoscope type, Pearson over spots (cpnn types summed to stereoscope's), and the mean."""
    mapped = to_stereoscope(props)
    ok = (mapped.notna().all(1) & stereo.notna().all(1)).to_numpy()
    r = {
        c: float(columnwise_pearson(mapped.loc[ok, [c]].to_numpy(), stereo.loc[ok, [c]].to_numpy())[0])
        for c in stereo.columns
        if c in mapped
    }
    return {**{k: round(v, 2) for k, v in r.items()}, "mean over types": round(float(np.mean(list(r.values()))), 3)}


def timed(fn) -> dict:
    """Wall seconds, CPU seconds (this process) and peak added resident memory of ``fn()``."""
    proc = psutil.Process()
    cpu0 = sum(proc.cpu_times()[:2])
    with Peak() as p:
        fn()
    return {"seconds": p.seconds, "CPU s": sum(proc.cpu_times()[:2]) - cpu0, "peak added MiB": p.added}


def agreement_part(args) -> tuple[list[dict], ad.AnnData]:
    sdata = cp.datasets.her2st(list(HER2ST_SECTIONS), images=False)
    t = sdata["table"]
    stereo = cp.datasets.her2st_proportions("major", sections=list(HER2ST_SECTIONS)).reindex(t.obs_names)
    cp.pp.build_prototypes(t, cp.datasets.wu2021_cid4465(), cell_type_key="celltype_major", method="nb")
    rows, reference = [], None
    runs = [(n, s, None) for n in args.shared for s in range(args.seeds)] + [(args.shared[0], 0, t.n_obs)]
    for shared, seed, chunk in runs:
        cost = timed(
            lambda n=shared, s=seed, c=chunk: cp.pp.deconvolve(t, shared_spots=n, seed=s, chunk_size=c, key_added="dec")
        )
        info = t.uns["cpnn"]["deconvolution"]["dec"]
        row = {
            "shared_spots": min(shared, t.n_obs),
            "seed": seed,
            "chunk": "one chunk" if chunk else info["chunk_size"],
            **agreement(t.obsm["dec"], stereo),
            "spots/s": round(t.n_obs / cost["seconds"], 1),
            "rounds": info["n_iter"],
        }
        if chunk:
            row["max |diff| vs chunked"] = float(np.nanmax(np.abs(t.obsm["dec"].to_numpy() - reference)))
        elif reference is None:
            reference = t.obsm["dec"].to_numpy().copy()
        rows.append(row)
        print(row, flush=True)
    return rows, t


def synthetic_bins(t: ad.AnnData, n: int, seed: int = 0) -> ad.AnnData:
    """``n`` 16-um-like bins: HER2ST spots resampled with replacement, counts thinned to 1/10."""
    rng = np.random.default_rng(seed)
    X = t.X.tocsr()[rng.integers(0, t.n_obs, n)]
    X.data = rng.binomial(X.data.astype(np.int64), 0.1).astype(np.float32)
    X.eliminate_zeros()
    out = ad.AnnData(X, obs=pd.DataFrame(index=[f"bin{i}" for i in range(n)]), var=t.var.copy())
    out.varm = {k: v for k, v in t.varm.items()}
    out.uns["cpnn"] = {k: v for k, v in t.uns["cpnn"].items() if k != "deconvolution"}
    return out


def scale_part(args, t: ad.AnnData) -> list[dict]:
    import torch

    rows = []
    # like for like with the table: the 1,193 spots of the six imaged sections, one thread
    imaged = t[t.obs["section"].isin(["B4", "C2", "C3", "C4", "C5", "C6"]).to_numpy()].copy()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cost = timed(lambda: cp.pp.deconvolve(imaged, key_added="dec"))
    torch.set_num_threads(threads)
    rows.append({"bins": f"{imaged.n_obs} HER2ST spots, 1 thread", "genes": imaged.uns["cpnn"]["deconvolution"]["dec"]["n_genes"],
                 "chunk": imaged.uns["cpnn"]["deconvolution"]["dec"]["chunk_size"], "seconds": round(cost["seconds"], 1),
                 "bins/s": round(imaged.n_obs / cost["seconds"], 1), "CPU s": round(cost["CPU s"], 1),
                 "peak added MiB": round(cost["peak added MiB"]), "result MiB": "-"})  # fmt: skip
    print(rows[-1], flush=True)
    for n in args.sizes:
        bins = synthetic_bins(t, n)
        cost = timed(lambda b=bins: cp.pp.deconvolve(b, key_added="dec"))
        info = bins.uns["cpnn"]["deconvolution"]["dec"]
        row = {
            "bins": n,
            "genes": info["n_genes"],
            "chunk": info["chunk_size"],
            "seconds": round(cost["seconds"], 1),
            "bins/s": round(n / cost["seconds"], 1),
            "CPU s": round(cost["CPU s"], 1),
            "peak added MiB": round(cost["peak added MiB"]),
            "result MiB": round(n * len(bins.obsm["dec"].columns) * 4 / 2**20, 1),
        }
        rows.append(row)
        print(row, flush=True)
        del bins
    return rows


def peer_part() -> list[dict]:
    try:
        from scvi.external import RNAStereoscope, SpatialStereoscope
    except ImportError:
        print("--peer: scvi-tools is not installed (pip install scvi-tools); skipped", flush=True)
        return []
    sdata = cp.datasets.her2st(images=False)
    t = sdata["table"]
    stereo = cp.datasets.her2st_proportions("major").reindex(t.obs_names)
    ref = cp.datasets.wu2021_cid4465()
    cp.pp.build_prototypes(t, ref, cell_type_key="celltype_major", method="nb")
    rows = []
    cost = timed(lambda: cp.pp.deconvolve(t, key_added="dec"))
    genes = list(t.uns["cpnn"]["deconvolution"]["dec"]["genes"])
    rows.append({"method": "cpnn nb", "spots/s": round(t.n_obs / cost["seconds"], 1),
                 "CPU s": round(cost["CPU s"], 1), **agreement(t.obsm["dec"], stereo)})  # fmt: skip
    sc = ref[:, genes].copy()
    st = t[:, genes].copy()

    def run():
        RNAStereoscope.setup_anndata(sc, labels_key="celltype_major")
        sc_model = RNAStereoscope(sc)
        sc_model.train()
        SpatialStereoscope.setup_anndata(st)
        model = SpatialStereoscope.from_rna_model(st, sc_model)
        model.train()
        st.obsm["stereoscope"] = model.get_proportions()

    cost = timed(run)
    props = st.obsm["stereoscope"]
    props.index = t.obs_names
    rows.append({"method": "scvi-tools stereoscope (API defaults)", "spots/s": round(t.n_obs / cost["seconds"], 2),
                 "CPU s": round(cost["CPU s"], 1), **agreement(props, stereo)})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 50000, 150000])
    ap.add_argument("--shared", type=int, nargs="*", default=[1000, 500, 2000, 20000], help="shared_spots values")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--peer", action="store_true")
    args = ap.parse_args()
    cp.settings.verbosity = 0
    cp.settings.progress_bar = False
    t0 = time.perf_counter()
    agree_rows, t = agreement_part(args)
    scale_rows = scale_part(args, t)
    print("\n### Agreement with stereoscope, 36 sections (13,620 spots)\n")
    print(table(agree_rows))
    print("\n### Scale: synthetic 16 um bins\n")
    print(table(scale_rows))
    if args.peer:
        print("\n### Side by side with scvi-tools, six imaged sections\n")
        print(table(peer_part()))
    print(f"\n(total {time.perf_counter() - t0:.0f} s, torch threads {__import__('torch').get_num_threads()})")


if __name__ == "__main__":
    main()
