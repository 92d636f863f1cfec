"""The layer order written in docs/architecture.md holds: no import goes up, none goes sideways, no module circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "cpnn"


def _layer_order() -> dict[str, int]:
    """Rank of each layer (0 = top) from the ``layers:`` line of docs/architecture.md."""
    line = re.search(r"^layers: `(.+)`$", (ROOT / "docs" / "architecture.md").read_text(), re.M)
    assert line, "docs/architecture.md lost its 'layers: `...`' line"
    return {name.strip(): rank for rank, group in enumerate(line[1].split(">")) for name in group.split("=")}


def _imports() -> dict[str, set[str]]:
    """Every module of cpnn (dotted, below ``cpnn``) and the cpnn modules it imports, lazily or not."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[:-1]  # a module's package; for an __init__, the package itself
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
                targets |= {".".join([*base, a.name]) for a in node.names} | {".".join(base)}
            elif isinstance(node, ast.ImportFrom | ast.Import):
                mods = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                targets |= {m.removeprefix("cpnn.") for m in mods if m and m.startswith("cpnn.")}
    return {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}


def test_no_import_goes_up_or_sideways():
    rank = _layer_order()
    wrong = []
    for module, targets in _imports().items():
        layer = module.split(".")[0]
        if layer in ("", "__init__", "__main__"):
            continue  # the package itself is the top: it exposes every layer
        assert layer in rank, f"{module}: layer {layer!r} is missing from the layers line of docs/architecture.md"
        wrong += [
            f"{module} -> {t}" for t in targets if t.split(".")[0] != layer and rank[t.split(".")[0]] <= rank[layer]
        ]
    assert not wrong, f"imports against the layer order of docs/architecture.md: {wrong}"


def test_no_module_imports_itself_through_others():
    graph = _imports()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError(f"import circle: {' -> '.join([*path[path.index(module) :], module])}")
        if module not in done:
            for t in sorted(graph[module]):
                visit(t, [*path, module])
            done.add(module)

    for module in sorted(graph):
        if module not in ("", "__init__", "__main__"):  # the package root imports every layer by design
            visit(module, [])


def test_the_level_is_asked_not_spelled_out():
    """28: the spot/slide split lives in tl/_levels.py; the rest of tl asks ``config.unit`` (it used to test the name 11 times)."""
    found = []
    for path in sorted((SRC / "tl").glob("*.py")):
        if path.name == "_levels.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [c.value for c in (node.left, *node.comparators) if isinstance(c, ast.Constant)]
                found += [f"{path.name}:{node.lineno}" for n in names if n in ("spot", "slide")]
    assert not found, f"level names compared outside tl/_levels.py: {found}"
