"""``import cpnn`` against ``import scanpy``: fresh processes, same interpreter, alternating, medians.

Run (under a minute):
    python benchmarks/import_time.py --repeats 5

Prints a table: median wall time of each import in a new process (warm file cache: one untimed
round first), and of ``import cpnn`` followed by first use of ``cp.pp`` and ``cp.tl`` (where torch,
scanpy and spatialdata load).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import table

SNIPPETS = {
    "import scanpy": "import scanpy",
    "import cpnn": "import cpnn",
    "import cpnn; cp.pp; cp.tl (first use)": "import cpnn as cp; cp.pp; cp.tl",
}


def timed(code: str) -> float:
    prog = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    for code in SNIPPETS.values():  # warm the file cache
        timed(code)
    times: dict[str, list[float]] = {k: [] for k in SNIPPETS}
    for _ in range(args.repeats):  # alternating, so that machine noise hits all alike
        for name, code in SNIPPETS.items():
            times[name].append(timed(code))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [{"import": k, "median s": v, "x import scanpy": v / med["import scanpy"]} for k, v in med.items()]
    print(table(rows))


if __name__ == "__main__":
    main()
