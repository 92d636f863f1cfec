"""The ``cpnn`` command: fit and predict on a SpatialData zarr store; clear errors, input never written."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from cpnn._cli import main

from ._synthetic import synthetic_sdata


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    sdata, profiles = synthetic_sdata(np.random.default_rng(4), n_side=6, sections=("S1", "S2"))
    root = tmp_path_factory.mktemp("cli")
    sdata.write(root / "data.zarr")
    profiles.to_csv(root / "profiles.csv")
    return root


def _tree(path):
    return sorted((p.relative_to(path).as_posix(), p.stat().st_size) for p in path.rglob("*") if p.is_file())


def test_fit_then_predict(store, capsys):
    before = _tree(store / "data.zarr")
    common = ["--encoder", "handcrafted", "--patch-size-um", "32", "--patch-px", "32", "--epochs", "5"]
    assert (
        main(
            [
                "fit",
                str(store / "data.zarr"),
                "--profiles",
                str(store / "profiles.csv"),
                "--n-genes",
                "30",
                "--train",
                "S1",
                "--validation",
                "S2",
                "--out",
                str(store / "m.pt"),
                *common,
            ]
        )
        == 0
    )
    assert "saved to" in capsys.readouterr().out
    assert (
        main(
            [
                "predict",
                str(store / "data.zarr"),
                "--model",
                str(store / "m.pt"),
                "--regions",
                "S2",
                "--groupby",
                "section",
                "--out",
                str(store / "pred.h5ad"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "mean per-gene Spearman" in out
    table = ad.read_h5ad(store / "pred.h5ad")
    assert table.layers["cpnn"].shape == table.shape
    assert table.obsm["cpnn_proportions"].loc[table.obs["section"] == "S2"].notna().all().all()
    assert (store / "pred.metrics.csv").exists()
    assert _tree(store / "data.zarr") == before  # the input store is only read


def test_errors_exit_with_a_message(store, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", str(store / "missing.zarr"), "--profiles", "x.csv", "--out", "m.pt"])
    assert err.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", str(store / "data.zarr"), "--out", "m.pt"])
    assert "exactly one of --reference" in capsys.readouterr().err


def _fails(capsys, argv, message):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    text = capsys.readouterr().err
    assert message in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1


def test_outputs_are_checked_before_any_work(store, tmp_path, capsys):
    """Every output path is checked first; nothing is overwritten without --force; bad inputs get one line."""
    data, profiles = str(store / "data.zarr"), str(store / "profiles.csv")
    fit = ["fit", data, "--profiles", profiles, "--encoder", "handcrafted", "--epochs", "1"]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _fails(capsys, [*fit, "--out", str(blocker / "m.pt")], "which is a file")
    existing = tmp_path / "m.pt"
    existing.write_bytes(b"old")
    _fails(capsys, [*fit, "--out", str(existing)], "pass --force")
    assert existing.read_bytes() == b"old"
    _fails(capsys, [*fit, "--out", str(tmp_path)], "is a folder")
    text_store = tmp_path / "notes.txt"
    text_store.write_text("not a store")
    _fails(
        capsys, ["fit", str(text_store), "--profiles", profiles, "--out", str(tmp_path / "n.pt")], "not a SpatialData"
    )
    (tmp_path / "empty").mkdir()
    _fails(capsys, ["fit", str(tmp_path / "empty"), "--profiles", profiles, "--out", str(tmp_path / "n.pt")], "not a")
    _fails(capsys, ["fit", data, "--profiles", str(tmp_path / "no.csv"), "--out", str(tmp_path / "n.pt")], "--profiles")
    _fails(capsys, [*fit, "--genes", str(tmp_path / "no.txt"), "--out", str(tmp_path / "n.pt")], "--genes")
    _fails(
        capsys,
        ["fit", data, "--reference", str(text_store), "--cell-type-key", "ct", "--out", str(tmp_path / "n.pt")],
        ".h5ad",
    )
    pred = ["predict", data, "--model", str(tmp_path / "none.pt")]
    _fails(capsys, [*pred, "--out", str(blocker / "p.h5ad")], "which is a file")
    _fails(capsys, [*pred, "--out", str(tmp_path / "p.h5ad")], "--model")
    assert not (tmp_path / "n.pt").exists() and not (tmp_path / "p.h5ad").exists()


def test_predict_checks_groupby_and_the_output_suffix_before_predicting(store, tmp_path, capsys, monkeypatch):
    """29.22: a --groupby typo used to fail after the whole prediction; --out pred.csv got HDF5."""
    import cpnn as cp

    model_path = tmp_path.parent / "cli_model.pt"
    fit = ["fit", str(store / "data.zarr"), "--profiles", str(store / "profiles.csv"), "--n-genes", "30", "--head",
           "direct", "--encoder", "handcrafted", "--patch-size-um", "32", "--patch-px", "32", "--epochs", "1"]  # fmt: skip
    assert main([*fit, "--out", str(model_path), "--force"]) == 0
    capsys.readouterr()
    called = {"n": 0}
    real = cp.tl.predict

    def counting(*a, **k):
        called["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(cp.tl, "predict", counting)
    pred = ["predict", str(store / "data.zarr"), "--model", str(model_path)]
    _fails(capsys, [*pred, "--groupby", "sectoin", "--out", str(tmp_path / "p.h5ad")], "groupby='sectoin'")
    _fails(capsys, [*pred, "--out", str(tmp_path / "p.csv")], ".h5ad suffix")
    assert called["n"] == 0 and not list(tmp_path.iterdir())


def test_an_interrupted_fit_is_saved_as_partial_and_exits_non_zero(store, tmp_path, capsys, monkeypatch):
    """29.21: Ctrl-C used to save the half-trained model under --out and exit 0."""
    from cpnn.models import DirectHead

    real = DirectHead.loss
    calls = {"n": 0}

    def loss(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(DirectHead, "loss", loss)
    out = tmp_path / "m.pt"
    argv = ["fit", str(store / "data.zarr"), "--profiles", str(store / "profiles.csv"), "--n-genes", "30",
            "--head", "direct", "--encoder", "handcrafted", "--patch-size-um", "32", "--patch-px", "32",
            "--epochs", "50", "--out", str(out)]  # fmt: skip
    assert main(argv) == 130
    assert not out.exists() and (tmp_path / "m.partial.pt").exists()
    assert "interrupted" in capsys.readouterr().out
