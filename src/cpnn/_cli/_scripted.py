"""``cpnn fit`` and ``cpnn predict``: the pipeline on a user's SpatialData zarr, for scripts and clusters."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .._core import dist
from .._errors import CpnnError


def check_store(path: str) -> Path:
    """The SpatialData zarr store ``path``, or an error saying what it is instead."""
    p = Path(path)
    if not p.exists():
        raise CpnnError(f"{path!r} does not exist; pass a SpatialData zarr store (e.g. written by sdata.write).")
    if not p.is_dir() or not any((p / name).is_file() for name in ("zarr.json", ".zgroup", ".zattrs")):
        raise CpnnError(f"{path!r} is not a SpatialData zarr store (a folder written by sdata.write).")
    return p


def _read(path: Path):
    """The store, read as cpnn reads stores: repaired after a killed write-back, under its shared lock."""
    from ..data import read_store

    return read_store(path)


def check_output(path: str | Path, *, force: bool, argument: str = "--out") -> Path:
    """An output path that can be written: its folder exists or can be made and is writable; no overwrite."""
    p = Path(path)
    if p.is_dir():
        raise CpnnError(f"{argument} {str(p)!r} is a folder; pass a file path.")
    if p.exists() and not force:
        raise CpnnError(f"{argument} {str(p)!r} exists; pass --force to overwrite it, or another path.")
    parent = p.parent
    blocker = next((a for a in [parent, *parent.parents] if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise CpnnError(f"{argument} {str(p)!r} lies under {str(blocker)!r}, which is a file.")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CpnnError(f"{argument} {str(p)!r}: its folder cannot be created ({err.strerror}).") from err
    if not os.access(parent, os.W_OK):
        raise CpnnError(f"{argument} {str(p)!r}: the folder {str(parent)!r} is not writable.")
    return p


def _input_file(path: str, argument: str, suffixes: tuple[str, ...] = ()) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CpnnError(f"{argument} {path!r} is not a file.")
    if suffixes and p.suffix.lower() not in suffixes:
        raise CpnnError(f"{argument} {path!r} must be a {' or '.join(suffixes)} file.")
    return p


def _reference(args: argparse.Namespace):
    import anndata as ad
    import pandas as pd

    if bool(args.reference) == bool(args.profiles):
        raise CpnnError("Pass exactly one of --reference (labelled cells, .h5ad) or --profiles (genes x types, .csv).")
    if args.profiles:
        path = _input_file(args.profiles, "--profiles", (".csv", ".tsv", ".txt"))
        try:
            return pd.read_csv(path, index_col=0, sep=None, engine="python"), {}
        except Exception as err:
            raise CpnnError(
                f"--profiles {args.profiles!r} cannot be read as a genes x cell types table ({err})."
            ) from err
    if not args.cell_type_key:
        raise CpnnError("--reference needs --cell-type-key (the obs column with the cell-type labels).")
    path = _input_file(args.reference, "--reference", (".h5ad",))
    try:
        return ad.read_h5ad(path), {"cell_type_key": args.cell_type_key}
    except Exception as err:
        raise CpnnError(f"--reference {args.reference!r} cannot be read as an AnnData .h5ad ({err}).") from err


def run_fit(args: argparse.Namespace) -> int:
    """Select genes, build prototypes, fit, and save the model; the input store is only read.

    Under ``torchrun --nproc-per-node N -m cpnn fit ...`` the processes train together and rank 0 saves.
    """
    import cpnn as cp

    cp.settings.verbosity = 2
    store = check_store(args.data)
    out = check_output(args.out, force=args.force)
    if args.checkpoint_dir:
        check_output(Path(args.checkpoint_dir) / "checkpoint.pt", force=True, argument="--checkpoint-dir")
    genes = _input_file(args.genes, "--genes").read_text().split() if args.genes else None
    reference, kw = _reference(args)
    sdata = _read(store)
    cp.pp.select_genes(sdata, n_top_genes=args.n_genes, genes=genes, table_key=args.table_key)
    cp.pp.build_prototypes(sdata, reference, table_key=args.table_key, **kw)
    model = cp.tl.fit(
        sdata,
        train=args.train,
        validation=args.validation,
        head=args.head,
        preset=args.preset,
        encoder=args.encoder,
        encoder_kwargs={
            "encoder_weights": args.encoder_weights, "patch_size_um": args.patch_size_um, "patch_px": args.patch_px,
        },
        train_kwargs={} if args.epochs is None else {"epochs": args.epochs},
        data_kwargs={"spot_diameter_um": args.spot_diameter_um, "table_key": args.table_key},
        seed=args.seed,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
    )  # fmt: skip
    interrupted = sdata[args.table_key].uns["cpnn"]["fit"].get("stop_reason") == "interrupted"
    if interrupted:  # Ctrl-C: never under the name of a finished model, and a failing exit status
        out = out.with_name(f"{out.stem}.partial{out.suffix}")
    if dist.is_main():  # under torchrun every process trained the same model; one writes it
        model.save(out)
        print(f"{model}\nsaved to {out}")
    if interrupted:
        again = " (--resume with the same --checkpoint-dir continues it)" if args.checkpoint_dir else ""
        print(f"training was interrupted: {out} holds the best model so far, not a finished one{again}")
        return 130
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Predict with a saved model and write the annotated table (.h5ad); evaluate where counts exist."""
    import cpnn as cp

    cp.settings.verbosity = 2
    store = check_store(args.data)
    if Path(args.out).suffix != ".h5ad":
        raise CpnnError(f"--out {args.out!r}: the annotated table is written as h5ad; give the file a .h5ad suffix.")
    out = check_output(args.out, force=args.force)
    metrics_path = check_output(out.with_suffix(".metrics.csv"), force=args.force, argument="--out (metrics)")
    model = cp.CPNN.load(_input_file(args.model, "--model"))
    sdata = _read(store)
    if args.table_key not in sdata.tables:
        raise CpnnError(f"--table-key {args.table_key!r} is not a table of the store; tables are {list(sdata.tables)}.")
    if args.groupby is not None:  # checked before the prediction runs, not after
        from .._core import resolve_groupby

        resolve_groupby(sdata[args.table_key], args.groupby)  # what evaluate will read
    cp.tl.predict(sdata, model, regions=args.regions, spot_diameter_um=args.spot_diameter_um, table_key=args.table_key)
    table = sdata[args.table_key]
    if table.X is not None and table.X.sum() > 0:
        metrics = cp.tl.evaluate(sdata, table_key=args.table_key, groupby=args.groupby)
        summary = table.uns["cpnn"]["metrics"]["cpnn"]
        print(f"mean per-gene Spearman {summary['spearman_per_group_mean']:.3f} per {args.groupby}")
        metrics.to_csv(metrics_path)
    table.write_h5ad(out)
    print(f"predictions: layers['cpnn'], obsm['cpnn_proportions'] in {out}")
    return 0


def add_parsers(sub) -> None:
    """Register ``fit`` and ``predict`` on the ``cpnn`` command's subparsers."""
    fit = sub.add_parser("fit", help="fit a model on a SpatialData zarr store (spots with images and raw counts)")
    fit.add_argument("data", help="SpatialData zarr store")
    fit.add_argument("--out", required=True, help="model file to write (.pt)")
    fit.add_argument("--reference", help="labelled single cells (.h5ad with raw counts)")
    fit.add_argument("--cell-type-key", help="obs column of --reference with the cell types")
    fit.add_argument("--profiles", help="ready prototypes instead: CSV, genes x cell types")
    fit.add_argument("--genes", help="text file with the gene panel (default: top --n-genes by mean)")
    fit.add_argument("--n-genes", type=int, default=250)
    fit.add_argument("--train", nargs="+", help="training regions or sections (default: all but --validation)")
    fit.add_argument("--validation", nargs="+", help="regions or sections for early stopping")
    fit.add_argument("--head", default="cpnn", help="a registered head: cpnn, direct, ridge")
    fit.add_argument("--preset", default="cpnn", choices=["cpnn", "paper"], help="'paper': the published model")
    fit.add_argument("--encoder", default="resnet18", help="'handcrafted', 'nuclei' or a timm architecture")
    fit.add_argument("--encoder-weights", "--weights", dest="encoder_weights", help="local encoder checkpoint")
    fit.add_argument("--patch-size-um", type=float, default=112.0)
    fit.add_argument("--patch-px", type=int, default=224)
    fit.add_argument("--epochs", type=int, default=None, help="epoch cap (default: the preset's)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--spot-diameter-um", type=float, help="55 for Visium, 100 for legacy ST, when not recorded")
    fit.add_argument("--checkpoint-dir", help="write a checkpoint every epoch here")
    fit.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    fit.add_argument("--table-key", default="table")
    fit.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    fit.set_defaults(run=run_fit)

    pred = sub.add_parser("predict", help="predict expression and composition with a saved model")
    pred.add_argument("data", help="SpatialData zarr store")
    pred.add_argument("--model", required=True, help="model file from 'cpnn fit'")
    pred.add_argument("--out", required=True, help="annotated table to write (.h5ad)")
    pred.add_argument("--regions", nargs="+", help="regions or sections to predict (default all)")
    pred.add_argument("--groupby", default="region", help="obs column to evaluate per group, when counts exist")
    pred.add_argument("--spot-diameter-um", type=float)
    pred.add_argument("--table-key", default="table")
    pred.add_argument("--force", action="store_true", help="overwrite --out (and its .metrics.csv) if they exist")
    pred.set_defaults(run=run_predict)
