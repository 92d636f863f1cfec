"""cpnn's thread policy (issue 39): the cores a busy machine has free, a fixed number when asked, the caller's
torch setting given back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cpnn as cp
from cpnn._core import _threads

from ._synthetic import synthetic_sdata

KW = {"encoder": "handcrafted", "patch_size_um": 32, "patch_px": 32, "seed": 0, "context_um": 0, "targets": "given"}


@pytest.fixture
def auto(monkeypatch):
    """cp.settings.n_jobs=None (the idle-core policy) on a machine of 4 usable cores."""
    monkeypatch.setattr(cp.settings, "_n_jobs", None)
    monkeypatch.setattr(_threads, "usable_cores", lambda: 4)


@pytest.mark.parametrize(("idle", "threads"), [(0.2, 1), (1.4, 1), (1.6, 2), (3.9, 4), (7.0, 4)])
def test_idle_cores_decide_the_threads(auto, monkeypatch, idle, threads):
    monkeypatch.setattr(_threads, "idle_cores", lambda window_s=0.1: idle)
    n, why = _threads.choose_threads(None)
    assert n == threads and f"{idle:.1f} of 4 cores idle" in why


def test_idle_cores_are_measured_from_the_kernel():
    free = _threads.idle_cores(0.05)
    assert 0.0 <= free <= (torch.get_num_threads() + 64)


def test_a_fit_uses_the_chosen_threads_and_gives_the_callers_back(auto, monkeypatch):
    sdata, profiles = synthetic_sdata(np.random.default_rng(39), n_side=6, sections=("S1",))
    cp.pp.select_genes(sdata, n_top_genes=30)
    cp.pp.build_prototypes(sdata, profiles)
    monkeypatch.setattr(_threads, "idle_cores", lambda window_s=0.1: 0.3)  # a busy machine
    torch.set_num_threads(2)
    try:
        cp.tl.fit(sdata, epochs=1, **KW)
        assert sdata["table"].uns["cpnn"]["fit"]["threads"] == 1
        assert torch.get_num_threads() == 2  # restored
        monkeypatch.setattr(cp.settings, "_n_jobs", 2)
        with pytest.raises(cp.CpnnError):  # restored after an error too
            cp.tl.fit(sdata, epochs=1, image_key="typo", **KW)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        cp.tl.fit(sdata, epochs=1, **KW)  # a fixed number, whatever the load
        assert sdata["table"].uns["cpnn"]["fit"]["threads"] == 2 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))


def test_deterministic_runs_do_not_move_with_the_load(auto, monkeypatch):
    monkeypatch.setattr(_threads, "idle_cores", lambda window_s=0.1: 0.3)
    assert _threads.choose_threads(None, deterministic=True)[0] == 4
    assert _threads.choose_threads(-1)[0] == 4 and _threads.choose_threads(3)[0] == 3


@pytest.mark.parametrize("bad", ["two", 0, -2, 1.5, True])
def test_n_jobs_is_checked(bad, monkeypatch):
    monkeypatch.setattr(cp.settings, "_n_jobs", None)
    with pytest.raises(cp.CpnnError, match=r"cp.settings.n_jobs = .*use None \(unset\) for the idle cores"):
        cp.settings.n_jobs = bad
    from cpnn._settings import CpnnSettings

    monkeypatch.setenv("CPNN_N_JOBS", "3")
    assert CpnnSettings().n_jobs == 3
    monkeypatch.setenv("CPNN_N_JOBS", "two")  # like CPNN_DIST_TIMEOUT: named where it is used, import still works
    with pytest.raises(cp.CpnnError, match=r"the environment variable CPNN_N_JOBS = 'two'"):
        CpnnSettings().n_jobs  # noqa: B018


def test_the_fused_optimiser_trains_the_same_history_as_the_per_tensor_one(monkeypatch):
    """#39: AdamW's fused kernel in place of torch's CPU default (one tensor at a time): same seed, same history."""
    sdata, profiles = synthetic_sdata(np.random.default_rng(3), n_side=6, sections=("S1", "S2"))
    cp.pp.select_genes(sdata, n_top_genes=30)
    cp.pp.build_prototypes(sdata, profiles)
    kw = {**KW, "train": ["S1"], "validation": ["S2"], "epochs": 8, "batch_size": 8, "preset": "paper"}
    fused = cp.tl.fit(sdata, **kw).history
    real = torch.optim.AdamW
    made = []

    def per_tensor(params, **options):
        made.append(options)
        return real(params, **{**options, "fused": False, "foreach": False})

    monkeypatch.setattr(torch.optim, "AdamW", per_tensor)
    plain = cp.tl.fit(sdata, **kw).history
    assert made and made[0].get("fused") is True  # fit asked for the fused kernel
    for a, b in zip(fused, plain, strict=True):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-5)
