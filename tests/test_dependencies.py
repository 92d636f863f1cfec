"""The dependencies pyproject.toml declares are exactly the packages cpnn imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Imported only inside ``try: ... except ImportError``, with a message naming how to install them.
OPTIONAL = {
    "conch": "pip install git+https://github.com/Mahmoodlab/CONCH.git",
    "transformers": "cpnn[foundation]",
    "openslide": "cpnn[openslide]",
    "spatialdata_io": "cpnn[io]",
}


def _imports() -> set[str]:
    found = set()
    for path in (ROOT / "src" / "cpnn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "cpnn"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_declared_dependencies_are_what_is_imported():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    dist_of = packages_distributions()
    imported = set()
    for module in _imports() - set(OPTIONAL):
        names = {d.lower().replace("_", "-") for d in dist_of.get(module, [module])}
        assert names & core, f"{module} is imported but no core dependency provides it ({names})"
        imported |= names & core
    unused = core - imported
    assert not unused, f"declared but never imported: {sorted(unused)}"
    # the optional imports are in the extras their messages name
    assert {"transformers", "openslide-python", "openslide-bin", "spatialdata-io"} <= extras
