"""How options and inputs travel through cpnn's code, measured from its source (issue #40).

Run on any checkout (the numbers in docs/architecture.md compare two):
    python benchmarks/code_shape.py [--src path/to/src]

Prints one table: ``fit``'s parameter count and docstring lines (rendered), the places each option
that is an options-record field today (``--options-of`` names the checkout whose records count, so
that two checkouts count the same names) is spelled in ``tl`` and the heads' and encoders' option
code (parameters, keywords passed on, attributes, string keys, record fields: an AST count), imports
into another subpackage's private module, and the longest function bodies.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np


def fit_facts(src: Path) -> tuple[list[str], int]:
    """``fit``'s parameter names and its rendered docstring's line count (imported from ``src``)."""
    code = (
        "import inspect, json, cpnn as cp; p = list(inspect.signature(cp.tl.fit).parameters); "
        "print(json.dumps([p, len(cp.tl.fit.__doc__.splitlines())]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(src)}, check=True
    )
    import json

    params, lines = json.loads(out.stdout.strip().splitlines()[-1])
    return params, lines


def record_fields(src: Path) -> list[str]:
    """Every field of an options record (``class ...Options``) in ``src``."""
    names: set[str] = set()
    for path in (src / "cpnn").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Options"):
                names |= {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    return sorted(names)


def spellings(src: Path, names: list[str]) -> dict[str, int]:
    """Per option, its AST occurrences in tl/ and the heads' and encoders' packages."""
    files = [*(src / "cpnn" / "tl").glob("*.py"), *(src / "cpnn" / "models" / "heads").glob("*.py")]
    files.append(src / "cpnn" / "models" / "encoders" / "__init__.py")
    count = dict.fromkeys(names, 0)
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            found = None
            if isinstance(node, ast.arg):
                found = node.arg
            elif isinstance(node, ast.keyword):
                found = node.arg
            elif isinstance(node, ast.Attribute):
                found = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                found = node.target.id
            if found in count:
                count[found] += 1
    return count


def private_imports(src: Path) -> list[str]:
    """``from ..<other subpackage>._<module> import ...`` anywhere in the package."""
    out = []
    root = src / "cpnn"
    for path in root.rglob("*.py"):
        own = path.relative_to(root).parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1 and node.module:
                parts = node.module.split(".")
                up = len(path.relative_to(root).parts) - node.level
                target = parts[0] if up == 0 else own
                if up == 0 and target != own and any(p.startswith("_") for p in parts[1:]):
                    out.append(f"{path.relative_to(root)} -> {node.module}")
    return out


def longest_bodies(src: Path, n: int = 3) -> list[tuple[str, int]]:
    """The ``n`` longest function bodies (lines of code after the docstring)."""
    sizes = []
    for path in (src / "cpnn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                body = node.body
                if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                    body = body[1:] or body
                sizes.append((node.name, node.end_lineno - body[0].lineno + 1))
    return sorted(sizes, key=lambda t: -t[1])[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(Path(__file__).parents[1] / "src"))
    ap.add_argument("--options-of", default=None, help="the src whose record fields are counted (default --src)")
    args = ap.parse_args()
    src = Path(args.src).resolve()
    params, doc_lines = fit_facts(src)
    names = record_fields(Path(args.options_of or src).resolve())
    spelled = spellings(src, names)
    values = np.array(list(spelled.values()))
    private = private_imports(src)
    rows = [
        ("fit parameters", len(params)),
        ("fit docstring lines (rendered)", doc_lines),
        ("options counted (the records' fields)", len(names)),
        ("places such an option is spelled: mean / max", f"{values.mean():.1f} / {values.max()}"),
        ("most spelled", ", ".join(f"{k} {v}" for k, v in sorted(spelled.items(), key=lambda t: -t[1])[:3])),
        ("imports into another subpackage's private module", len(private)),
        ("longest function bodies", ", ".join(f"{k} {v}" for k, v in longest_bodies(src))),
    ]
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    for line in private:
        print("  private import:", line)


if __name__ == "__main__":
    main()
