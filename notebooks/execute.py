"""Execute tutorial notebooks in place and stamp them with the cpnn version that produced their outputs.

Run (the kernel needs matplotlib's inline backend, so MPLBACKEND must not be set):
    env -u MPLBACKEND CPNN_DATA_DIR=$(cd ../shared/data && pwd) python notebooks/execute.py notebooks/02_slide_level.ipynb

The docs render the committed outputs; ``tests/test_notebooks.py`` fails when a notebook's stamp
names another release than the installed cpnn, so a tutorial cannot silently show an older
release's results.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import cpnn


def main(paths: list[str]) -> None:
    """Execute each notebook of ``paths`` in place, then record the cpnn version in its metadata."""
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb, timeout=2400, kernel_name="python3", resources={"metadata": {"path": str(Path(path).parent)}}
        ).execute()
        nb.metadata["cpnn"] = {"version": cpnn.__version__}
        nbformat.write(nb, path)
        print(f"executed {path} with cpnn {cpnn.__version__}")


if __name__ == "__main__":
    main(sys.argv[1:])
