"""A process that writes into (or reads) a SpatialData zarr store, for the concurrency and kill tests.

Usage:
    python store_worker.py predict STORE MODEL KEY N     # N predictions into STORE, keys KEY_0 .. KEY_{N-1}
    python store_worker.py loop STORE MODEL KEY          # predictions into STORE until killed
    python store_worker.py read STORE SECONDS MODE       # read the table again and again (MODE: cpnn | spatialdata)

Prints ``ready`` once cpnn is imported; ``read`` prints ``reads=<n> failures=<m> absent=<k>`` at the end.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cpnn as cp


def main() -> None:
    mode, store = sys.argv[1], Path(sys.argv[2])
    cp.settings.cachedir = os.environ["CPNN_CACHE_DIR"]
    cp.settings.progress_bar = False
    cp.settings.verbosity = 1
    print("ready", flush=True)
    if mode in ("predict", "loop"):
        model = cp.CPNN.load(sys.argv[3])
        key = sys.argv[4]
        n = int(sys.argv[5]) if mode == "predict" else 10**9
        for k in range(n):
            cp.tl.predict({"A": store}, model, key_added=f"{key}_{k}", device="cpu")
            print(f"wrote {key}_{k}", flush=True)
        return
    import spatialdata as sd

    from cpnn.data import read_store

    seconds, how = float(sys.argv[3]), sys.argv[4]
    reads = failures = absent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        reads += 1
        try:
            sdata = read_store(store) if how == "cpnn" else sd.read_zarr(store)
            if "table" not in sdata.tables or sdata["table"].n_obs == 0:
                absent += 1
        except Exception:
            failures += 1
    print(f"reads={reads} failures={failures} absent={absent}", flush=True)


if __name__ == "__main__":
    main()
