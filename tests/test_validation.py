"""A table of bad inputs: each raises a cpnn error naming the argument and the fix, and leaves the data unchanged."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import cpnn as cp

from ._synthetic import synthetic_sdata


@pytest.fixture(scope="module")
def world():
    """A small SpatialData with a panel and prototypes, a fitted model and its predictions, and a reference."""
    sdata, profiles = synthetic_sdata(np.random.default_rng(7), n_side=6, sections=("S1", "S2"))
    cp.pp.select_genes(sdata, n_top_genes=30)
    cp.pp.build_prototypes(sdata, profiles)
    model = cp.tl.fit(
        sdata, train=["S1"], validation=["S2"], encoder="handcrafted", patch_size_um=32, patch_px=32, epochs=3
    )
    cp.tl.predict(sdata, model)
    table = sdata["table"]
    rng = np.random.default_rng(0)
    ref = ad.AnnData(
        sparse.csr_matrix(rng.poisson(2.0, size=(40, table.n_vars)).astype(np.float32)),
        obs=pd.DataFrame({"ct": np.repeat(["a", "b"], 20)}, index=[f"c{i}" for i in range(40)]),
        var=pd.DataFrame(index=table.var_names.copy()),
    )
    return {"sdata": sdata, "model": model, "ref": ref, "profiles": profiles}


def _nan_table(w):
    t = w["sdata"]["table"].copy()
    X = t.X.toarray()
    X[0, 0] = np.nan
    t.X = X
    return t


def _negative_ref(w):
    r = w["ref"].copy()
    X = r.X.toarray()
    X[0, 0] = -1
    r.X = sparse.csr_matrix(X)
    return r


def _dup_var_table(w):
    t = w["sdata"]["table"].copy()
    t.var_names = ["dup"] * 2 + list(t.var_names[2:])
    return t


def _dup_obs_table(w):
    t = w["sdata"]["table"].copy()
    t.obs_names = ["same"] * 2 + list(t.obs_names[2:])
    return t


def _gene_without_prototype(w):
    t = w["sdata"]["table"].copy()
    lacking = t.var_names[~t.var["cpnn_in_reference"].to_numpy(bool)]
    t.var.loc[lacking[:1] if len(lacking) else t.var_names[:1], "cpnn_selected"] = True
    if not len(lacking):
        t.var.loc[t.var_names[:1], "cpnn_in_reference"] = False
    return t


def _no_image_sdata(w):
    import spatialdata as sd

    s = w["sdata"]
    return sd.SpatialData(shapes=dict(s.shapes), tables={"table": s["table"].copy()})


def _bad_dtype_sdata(w):
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    s = w["sdata"]
    images = {}
    for k, im in s.images.items():
        arr = im["scale0"].image if hasattr(im, "children") and "scale0" in im.children else im
        images[k] = Image2DModel.parse(
            np.asarray(arr).astype(np.int64) * 1000,
            dims=("c", "y", "x"),
            transformations=get_transformation(arr, get_all=True),
        )
    return sd.SpatialData(images=images, shapes=dict(s.shapes), tables={"table": s["table"].copy()})


def _copy_sdata(w, *, table=None, shapes=None, images=None):
    """A SpatialData sharing the world's elements except those replaced (the world is never touched)."""
    import spatialdata as sd

    s = w["sdata"]
    return sd.SpatialData(
        images=images if images is not None else dict(s.images),
        shapes=shapes if shapes is not None else dict(s.shapes),
        tables={"table": table if table is not None else s["table"].copy()},
    )


def _with_radius(w, value):
    s = _copy_sdata(w, shapes={k: v.copy() for k, v in w["sdata"].shapes.items()})
    s.shapes["S1_spots"]["radius"] = value  # edited in place, after spatialdata's own checks
    return s


def _image_values(w, values):
    """The world's images replaced by float images of ``values`` (a function of the uint8 array)."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    images = {}
    for k, im in w["sdata"].images.items():
        arr = np.asarray(im)
        images[k] = Image2DModel.parse(
            values(arr), dims=("c", "y", "x"), transformations=get_transformation(im, get_all=True)
        )
    return _copy_sdata(w, images=images)


def _nan_pixels(arr):
    out = arr.astype(np.float32) / 255
    out[:, : out.shape[1] // 2] = np.nan
    return out


def _region_not_annotated(w):
    s = _copy_sdata(w)
    s["table"].uns["spatialdata_attrs"]["region"] = ["S1_spots"]
    return s


def _lognormed(w):
    t = w["sdata"]["table"].copy()
    X = t.X.toarray()
    t.X = sparse.csr_matrix(np.log1p(X / X.sum(1, keepdims=True) * 1e4))
    return _copy_sdata(w, table=t)


def _one_type(w):
    t = w["sdata"]["table"].copy()
    t.varm["one"] = np.asarray(t.varm["cpnn_prototypes"])[:, :1]
    t.uns["cpnn"]["prototype_sets"]["one"] = {"cell_types": ["t0"]}
    return _copy_sdata(w, table=t)


# (id, call, expected message fragment); every call gets the module's objects through ``w``
CASES = [
    ("wrong object type", lambda w: cp.pp.select_genes(pd.DataFrame()), "data must be an AnnData or a SpatialData"),
    ("unknown table_key", lambda w: cp.pp.select_genes(w["sdata"], table_key="nope"), "table_key='nope'"),
    ("n_top_genes < 1", lambda w: cp.pp.select_genes(w["sdata"], n_top_genes=0), "n_top_genes"),
    ("unknown flavor", lambda w: cp.pp.select_genes(w["sdata"], flavor="x"), "flavor='x'"),
    (
        "no panel gene in data",
        lambda w: cp.pp.select_genes(w["sdata"], genes=["ZZZ1", "ZZZ2"]),
        "Check the gene naming",
    ),
    ("unknown layer", lambda w: cp.pp.select_genes(w["sdata"], layer="counts"), "layer='counts'"),
    ("NaN counts", lambda w: cp.pp.select_genes(_nan_table(w)), "NaN or infinite"),
    (
        "negative reference counts",
        lambda w: cp.pp.build_prototypes(
            w["sdata"],
            _negative_ref(w),
            cell_type_key="ct",
            min_cells=1,
            max_mito_pct=None,
            min_genes=None,
            max_genes=None,
        ),
        "negative values",
    ),
    (
        "unknown cell_type_key",
        lambda w: cp.pp.build_prototypes(w["sdata"], w["ref"], cell_type_key="nope"),
        "cell_type_key='nope'",
    ),
    ("reference of wrong type", lambda w: cp.pp.build_prototypes(w["sdata"], [1, 2]), "reference must be an AnnData"),
    (
        "profiles with one type",
        lambda w: cp.pp.build_prototypes(w["sdata"], w["profiles"].iloc[:, :1]),
        "at least two cell types",
    ),
    ("duplicated var names", lambda w: cp.pp.build_prototypes(_dup_var_table(w), w["profiles"]), "duplicates"),
    (
        "genes share nothing with the reference",
        lambda w: cp.pp.build_prototypes(
            w["sdata"], w["profiles"].set_axis([f"ENSG{i}" for i in range(len(w["profiles"]))])
        ),
        "share no gene",
    ),
    ("embed an AnnData", lambda w: cp.pp.embed(w["sdata"]["table"]), "SpatialData with images"),
    ("unknown head", lambda w: cp.tl.fit(w["sdata"], head="mlp"), "head='mlp'"),
    ("unknown prototypes mode", lambda w: cp.tl.fit(w["sdata"], prototypes="soft"), "prototypes='soft'"),
    (
        "fine-tune hand-crafted",
        lambda w: cp.tl.fit(w["sdata"], encoder="handcrafted", finetune=True),
        "no weights to fine-tune",
    ),
    ("non-positive epochs", lambda w: cp.tl.fit(w["sdata"], epochs=0), "must be positive"),
    (
        "overlapping train/validation",
        lambda w: cp.tl.fit(w["sdata"], train=["S1"], validation=["S1"], encoder="handcrafted"),
        "make them disjoint",
    ),
    ("unknown region", lambda w: cp.tl.fit(w["sdata"], train=["S9"], encoder="handcrafted"), "matches no region"),
    (
        "empty boolean selection",
        lambda w: cp.tl.fit(w["sdata"], train=np.zeros(w["sdata"]["table"].n_obs, bool)),
        "selects no spot",
    ),
    ("mask of wrong length", lambda w: cp.tl.fit(w["sdata"], train=np.ones(3, bool)), "must have shape"),
    ("duplicated obs names", lambda w: cp.tl.evaluate(_dup_obs_table(w)), "obs_names_make_unique"),
    ("panel gene without prototype", lambda w: cp.tl.fit(_gene_without_prototype(w)), "have no prototype"),
    ("missing prototypes", lambda w: cp.tl.fit(w["sdata"], prototypes_key="other"), "No prototypes in varm"),
    (
        "no image for a region",
        lambda w: cp.tl.predict(_no_image_sdata(w), w["model"], regions=["S1"], embedding_key="fresh"),
        "image",
    ),
    (
        "image dtype",
        lambda w: cp.tl.predict(_bad_dtype_sdata(w), w["model"], regions=["S1"], embedding_key="fresh"),
        "dtype",
    ),
    ("predict unknown region", lambda w: cp.tl.predict(w["sdata"], w["model"], regions=["nope"]), "matches no region"),
    ("evaluate missing layer", lambda w: cp.tl.evaluate(w["sdata"], layer="nope"), "run cp.tl.predict first"),
    ("evaluate unknown groupby", lambda w: cp.tl.evaluate(w["sdata"], groupby="nope"), "groupby='nope'"),
    ("evaluate unknown genes", lambda w: cp.tl.evaluate(w["sdata"], genes=["ZZZ"]), "not in the table"),
    ("split unknown column", lambda w: cp.tl.split(w["sdata"], by="donor"), "by='donor'"),
    ("split unknown test group", lambda w: cp.tl.split(w["sdata"], by="section", test="S7"), "valid groups"),
    ("plot unknown cell type", lambda w: cp.pl.proportions(w["sdata"], cell_types=["x"]), "valid cell types"),
    ("plot unknown region", lambda w: cp.pl.proportions(w["sdata"], region="S7"), "valid regions"),
    ("plot unknown gene", lambda w: cp.pl.expression(w["sdata"], ["ZZZ"]), "valid genes"),
    (
        "proportions_to_obs without predictions",
        lambda w: cp.pp.proportions_to_obs(w["sdata"], key="nope"),
        "run cp.tl.predict first",
    ),
    (
        "resume without checkpoint_dir",
        lambda w: cp.tl.fit(w["sdata"], resume=True, encoder="handcrafted", patch_size_um=32, patch_px=32, epochs=1),
        "checkpoint_dir",
    ),
    # round two: every option checked before anything is read or written
    ("epochs not whole", lambda w: cp.tl.fit(w["sdata"], epochs=2.5), "epochs=2.5"),
    ("lr NaN", lambda w: cp.tl.fit(w["sdata"], lr=float("nan")), "lr=nan"),
    ("negative weight_decay", lambda w: cp.tl.fit(w["sdata"], weight_decay=-1.0), "weight_decay=-1.0"),
    ("dropout above 1", lambda w: cp.tl.fit(w["sdata"], dropout=1.5), "dropout=1.5"),
    ("patch_px zero", lambda w: cp.tl.fit(w["sdata"], patch_px=0), "patch_px=0"),
    ("patience zero", lambda w: cp.tl.fit(w["sdata"], patience=0), "patience=0"),
    ("embed batch_size zero", lambda w: cp.pp.embed(w["sdata"], batch_size=0), "batch_size=0"),
    ("predict batch_size zero", lambda w: cp.tl.predict(w["sdata"], w["model"], batch_size=0), "batch_size=0"),
    ("n_top_genes as text", lambda w: cp.pp.select_genes(w["sdata"], n_top_genes="250"), "n_top_genes='250'"),
    ("n_top_genes fractional", lambda w: cp.pp.select_genes(w["sdata"], n_top_genes=2.5), "n_top_genes=2.5"),
    (
        "several sections in one string",
        lambda w: cp.tl.fit(w["sdata"], train="S1,S2", encoder="handcrafted"),
        "several names in one string",
    ),
    (
        "negative spot radius",
        lambda w: cp.tl.predict(_with_radius(w, -3.0), w["model"], regions=["S1"], embedding_key="fresh"),
        "radius",
    ),
    (
        "NaN spot radius",
        lambda w: cp.tl.predict(_with_radius(w, np.nan), w["model"], regions=["S1"], embedding_key="fresh"),
        "radius",
    ),
    (
        "NaN pixels",
        lambda w: cp.tl.predict(_image_values(w, _nan_pixels), w["model"], regions=["S1"], embedding_key="fresh"),
        "NaN",
    ),
    (
        "float image above 255",
        lambda w: cp.tl.predict(
            _image_values(w, lambda a: a.astype(np.float32) * 4), w["model"], regions=["S1"], embedding_key="fresh"
        ),
        "Rescale it first",
    ),
    (
        "region not annotated by the table",
        lambda w: cp.tl.predict(_region_not_annotated(w), w["model"], embedding_key="fresh"),
        "S2_spots",
    ),
    (
        "composition targets from normalised values (default preset)",
        lambda w: cp.tl.fit(_lognormed(w), encoder="handcrafted", patch_size_um=32, patch_px=32),
        "'comp_reg': 0",
    ),
    (
        "NB loss on normalised values",
        lambda w: cp.tl.fit(_lognormed(w), preset="paper", encoder="handcrafted", patch_size_um=32, patch_px=32),
        "whole numbers",
    ),
    (
        "a single cell type",
        lambda w: cp.tl.fit(_one_type(w), prototypes_key="one", encoder="handcrafted", patch_size_um=32, patch_px=32),
        "at least two",
    ),
]


def _snapshot(sdata):
    t = sdata["table"]
    return {
        "X": t.X.copy(),
        "obs": t.obs.copy(),
        "var": t.var.copy(),
        "obsm": sorted(t.obsm),
        "layers": sorted(t.layers),
        "varm": {k: np.array(v) for k, v in t.varm.items()},
        "uns": copy.deepcopy({k: v for k, v in t.uns.get("cpnn", {}).items() if k not in ("history",)}),
        "elements": sorted(sdata.images) + sorted(sdata.shapes),
    }


def _assert_same(a, b):
    assert (a["X"] != b["X"]).nnz == 0
    pd.testing.assert_frame_equal(a["obs"], b["obs"])
    pd.testing.assert_frame_equal(a["var"], b["var"])
    assert a["obsm"] == b["obsm"] and a["layers"] == b["layers"] and a["elements"] == b["elements"]
    assert a["varm"].keys() == b["varm"].keys()
    for k in a["varm"]:
        np.testing.assert_array_equal(a["varm"][k], b["varm"][k])
    assert repr(a["uns"]) == repr(b["uns"])


def test_the_table_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize(("name", "call", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, name, call, message):
    before = _snapshot(world["sdata"])
    with pytest.raises(cp.CpnnError) as err:
        call(world)
    assert message in str(err.value), str(err.value)
    _assert_same(before, _snapshot(world["sdata"]))
