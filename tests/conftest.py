from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest

import cpnn as cp

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _data_dirs(tmp_path_factory):
    """Read the public data from CPNN_DATA_DIR (else ../shared/data); derive into a fresh cache."""
    if not os.environ.get("CPNN_DATA_DIR") and SHARED.is_dir():
        cp.settings.datadir = SHARED
    cp.settings.cachedir = tmp_path_factory.mktemp("cpnn_cache")
    cp.settings.verbosity = 1
    cp.settings.progress_bar = False
    # a fixed number of threads (torch's default, every core): results that must repeat exactly do not
    # move with the machine's load; the idle-core policy has its own tests (tests/test_threads.py)
    cp.settings.n_jobs = -1
    yield


@pytest.fixture(scope="session")
def her2st_all():
    """The six imaged HER2ST sections (images converted once per test session)."""
    return cp.datasets.her2st()


@pytest.fixture(scope="session")
def cid4465():
    return cp.datasets.wu2021_cid4465()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def cpnn_log():
    """What cpnn logs (scanpy's logger) during a test, as a function returning the text so far."""
    import io
    import logging

    import scanpy as sc

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    sc.settings._root_logger.addHandler(handler)
    yield buf.getvalue
    sc.settings._root_logger.removeHandler(handler)
