"""The documentation and the test suite's own settings (issue 38): code fences that render, cpnn's deprecations
as errors."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*```")


def _readme_commands() -> list[str]:
    return re.findall(r"^\s*(python3 -m venv \.venv && .+)$", (ROOT / "README.md").read_text(), flags=re.M)


def _fence_problems(text: str) -> list[str]:
    """Fence lines that open or close badly: text after a closing fence swallows what follows."""
    problems, inside = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if not FENCE.match(line):
            continue
        rest = line.strip()[3:]
        if inside and rest.strip():
            problems.append(f"line {number}: text after a closing fence: {line.strip()!r}")
        if not inside and " " in rest.strip() and not rest.strip().startswith("{"):  # MyST directives take arguments
            problems.append(f"line {number}: an opening fence with more than a language: {line.strip()!r}")
        inside = not inside
    if inside:
        problems.append("a fence is never closed")
    return problems


@pytest.mark.parametrize("path", [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"], ids=lambda p: p.name)
def test_every_code_fence_closes_cleanly(path):
    assert _fence_problems(path.read_text()) == []


def test_the_fence_check_catches_the_installation_page_of_0_3():
    broken = "```bash\npip install cpnn\n``` From a clone, the two commands:\n\n```bash\nx\n```\n"
    assert _fence_problems(broken) and "text after a closing fence" in _fence_problems(broken)[0]


def test_the_installation_page_holds_both_readme_commands_in_a_code_block():
    commands = _readme_commands()
    assert len(commands) == 2
    text = (ROOT / "docs" / "installation.md").read_text()
    blocks = re.findall(r"^```bash\n(.*?)^```$", text, flags=re.M | re.S)
    assert all(any(c.strip() in b for b in blocks) for c in commands)


def test_cpnn_deprecations_are_errors_in_the_test_suite():
    """pyproject's filterwarnings: a test that meets an old cpnn form without pytest.warns fails."""
    from cpnn._core import warn_renamed

    with pytest.raises(FutureWarning, match="renamed in cpnn"):
        warn_renamed("f(old=)", "new=", since="0.3", removed_in="0.4")
    warnings.warn("a dependency's deprecation", FutureWarning, stacklevel=1)  # still ignored


def test_saved_figures_follow_scanpys_dpi_save(tmp_path):
    """#38: saved figures ignored sc.settings.dpi_save (150 was hard-coded)."""
    import matplotlib
    import matplotlib.pyplot as plt
    import scanpy as sc
    from PIL import Image

    from cpnn.pl._utils import finish

    def saved(name: str) -> tuple[int, int]:
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        finish(fig, None, name="f", show=False, save=tmp_path / name, return_fig=True)
        plt.close(fig)
        return Image.open(tmp_path / name).size

    default = saved("default.png")
    with matplotlib.rc_context():
        sc.settings.set_figure_params(dpi_save=50)
        low = saved("low.png")
    assert low[0] < default[0] * 0.5, (low, default)  # 50 against 150 dots per inch
