"""Training safety: kill and resume, non-finite loss, Ctrl-C; the data is never left half-written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cpnn as cp
import cpnn.tl._train as train_mod
from cpnn.models import DirectHead

from ._synthetic import synthetic_sdata

FIT = {"head": "direct", "encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0}


@pytest.fixture(scope="module")
def sdata():
    s, _ = synthetic_sdata(np.random.default_rng(5), n_side=8, sections=("S1", "S2"))
    cp.pp.select_genes(s, n_top_genes=30)
    return s


class _Killed(BaseException):
    """Stands for SIGKILL right after a checkpoint was written (nothing else runs afterwards)."""


def _same_weights(a, b) -> None:
    for (k, v), (_, w) in zip(a.head.state_dict().items(), b.head.state_dict().items(), strict=True):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)


def test_killed_run_resumes_to_the_uninterrupted_result(sdata, tmp_path, monkeypatch):
    kw = {**FIT, "train": ["S1"], "validation": ["S2"], "epochs": 12, "patience": 100}
    reference = cp.tl.fit(sdata, **kw)

    real_save = train_mod._save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 5:
            raise _Killed

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        cp.tl.fit(sdata, **kw, checkpoint_dir=tmp_path)
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)
    (tmp_path / ".checkpoint.pt.deadbeef.tmp").write_bytes(b"half a file")  # a write cut short by the kill
    resumed = cp.tl.fit(sdata, **kw, checkpoint_dir=tmp_path, resume=True)
    assert sdata["table"].uns["cpnn"]["fit"]["resumed_from_epoch"] == 5
    assert resumed.history == reference.history
    _same_weights(resumed, reference)


def test_resume_refuses_a_checkpoint_of_another_run(sdata, tmp_path):
    kw = {**FIT, "train": ["S1"], "epochs": 3}
    cp.tl.fit(sdata, **kw, checkpoint_dir=tmp_path)
    with pytest.raises(cp.CpnnError, match="different training run"):
        cp.tl.fit(sdata, **{**kw, "lr": 5e-4}, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(cp.CpnnError, match="resume=True needs checkpoint_dir"):
        cp.tl.fit(sdata, **kw, resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(cp.CpnnError, match="cannot be read"):
        cp.tl.fit(sdata, **kw, checkpoint_dir=tmp_path, resume=True)


def _loss_fails_at(monkeypatch, call: int, exc: type[BaseException] | None):
    """Make the direct head's training loss NaN (exc=None) or raise ``exc`` at training call ``call``."""
    real = DirectHead.loss
    calls = {"n": 0}

    def loss(self, *args):
        out = real(self, *args)
        if self.training:
            calls["n"] += 1
            if calls["n"] == call:
                if exc is not None:
                    raise exc
                return out * float("nan")
        return out

    monkeypatch.setattr(DirectHead, "loss", loss)


def test_non_finite_loss_stops_with_the_last_good_weights(sdata, monkeypatch):
    kw = {**FIT, "train": ["S1"]}  # 64 spots: one batch per epoch
    three = cp.tl.fit(sdata, **kw, epochs=3)
    _loss_fails_at(monkeypatch, 4, None)
    with pytest.raises(cp.tl.TrainingDiverged, match="at epoch 4; the model keeps the weights of epoch 3") as err:
        cp.tl.fit(sdata, **kw, epochs=10)
    _same_weights(err.value.model, three)


def test_keyboard_interrupt_returns_the_best_model_so_far(sdata, monkeypatch):
    _loss_fails_at(monkeypatch, 6, KeyboardInterrupt)
    model = cp.tl.fit(sdata, **FIT, train=["S1"], validation=["S2"], epochs=50, patience=100)
    info = sdata["table"].uns["cpnn"]["fit"]
    assert info["stop_reason"] == "interrupted"
    assert len(model.history) == 5
    assert info["best_epoch"] == int(np.argmin([r["val_loss"] for r in model.history])) + 1


class _Payload:
    """An arbitrary object: unpickling it would run code, so loading must refuse it."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_model_files_are_versioned_and_never_execute_code(sdata, tmp_path, capsys):
    model = cp.tl.fit(sdata, **FIT, train=["S1"], epochs=2)
    path = tmp_path / "m.pt"
    model.save(path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(cp.CpnnError, match="format version 99, this cpnn reads version 1"):
        cp.CPNN.load(tmp_path / "future.pt")
    torch.save({"format": "cpnn-model", "evil": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(cp.CpnnError, match="not a readable cpnn model file"):
        cp.CPNN.load(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
