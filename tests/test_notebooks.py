"""The committed tutorials are what the docs render: every plotting cell has its figure, nothing leaks the machine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
PLOTS = re.compile(r"\b(cp|sc|sq|sdata\.pl|plt)\.pl\.\w+\(|\.pl\.render_\w+\(|\bplt\.(show|subplots)\(")
#: absolute paths of the machine that executed a notebook (home, work and temporary folders)
ABSOLUTE = re.compile(r"(?<![\w.])(/(?:work|home|root|tmp|Users|private|var/folders)/[^\s'\"]+|[A-Z]:\\\\)")
IMAGES = ("image/png", "image/jpeg", "image/svg+xml")


def _cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return "".join(output.get("text", ""))
    data = output.get("data", {})
    return "".join("".join(v) if isinstance(v, list) else str(v) for k, v in data.items() if k.startswith("text/"))


def test_there_are_tutorials():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_plotting_cell_has_its_figure(path):
    missing = []
    for i, cell in enumerate(_cells(path)):
        source = "".join(cell["source"])
        if not PLOTS.search(source):
            continue
        if not any(any(k in o.get("data", {}) for k in IMAGES) for o in cell.get("outputs", [])):
            missing.append((i, source.splitlines()[0]))
    assert not missing, (
        f"{path.name}: plotting cells without an image output (executed with a non-inline backend?): {missing}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_hold_no_absolute_path_and_no_warning(path):
    for i, cell in enumerate(_cells(path)):
        for out in cell.get("outputs", []):
            text = _text(out)
            hit = ABSOLUTE.search(text)
            assert hit is None, f"{path.name}, cell {i}: an absolute path of the executing machine: {hit.group(0)!r}"
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                assert "Warning" not in text, f"{path.name}, cell {i}: a warning in the rendered output: {text[:200]!r}"


def test_the_check_catches_what_it_should():
    """The patterns themselves: a plotting call, an absolute path."""
    assert PLOTS.search('cp.pl.proportions(sdata, region="B4");')
    assert PLOTS.search("sc.pl.umap(adata)") and not PLOTS.search("cp.tl.evaluate(sdata)")
    assert ABSOLUTE.search("saved to /tmp/tmpa1b2/model.pt") and ABSOLUTE.search("'/work/main/x.zarr'")
    assert not ABSOLUTE.search("mean +- sd / seeds, 0.5/1.0")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_come_from_this_release(path):
    """Tutorial 02 showed 0.2's results through the 0.3 cycle: each notebook records the version that executed it."""
    import cpnn

    stamp = json.loads(path.read_text())["metadata"].get("cpnn", {}).get("version", "none")
    assert stamp.split(".")[:2] == cpnn.__version__.split(".")[:2], (
        f"{path.name} was executed with cpnn {stamp}, this is {cpnn.__version__}: re-execute it "
        f"(python notebooks/execute.py {path.relative_to(path.parents[1])}) so the docs show this release's results."
    )
