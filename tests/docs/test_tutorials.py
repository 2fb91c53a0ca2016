"""Every tutorial in docs/tutorials runs: its ```python blocks are executed in order, in one namespace.

The blocks run on the package's simulator (small sizes, few epochs) in a
temporary working directory, so the tutorials cannot drift from the API.
Command lines in ```bash blocks (lines starting with ``scconcerto``) are
parsed by the real argument parser: a renamed command or option fails here.
The tutorials hold their own assertions (accuracy floors and the like).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parents[2] / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in a markdown file, in order."""
    return [body for lang, body in _FENCE.findall(path.read_text(encoding="utf-8")) if lang == language]


def test_there_are_tutorials_and_the_index_lists_each():
    assert len(TUTORIALS) >= 5
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for path in TUTORIALS:
        assert f"tutorials/{path.name}" in index, f"docs/index.md does not link {path.name}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_command_lines_parse(path):
    from scconcerto.cli import build_parser

    parser = build_parser()
    lines = [ln.strip() for block in code_blocks(path, "bash") for ln in block.splitlines()]
    for line in (ln for ln in lines if ln.startswith("scconcerto ")):
        args = parser.parse_args(shlex.split(line)[1:])  # exits (fails the test) on an unknown option
        assert callable(args.func)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_python_runs(path, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    blocks = code_blocks(path, "python")
    assert blocks, f"{path.name} has no python code"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"tutorial_{path.stem}"}
    try:
        for i, block in enumerate(blocks):
            code = compile(block, f"{path.name} (python block {i + 1})", "exec")
            exec(code, namespace)  # noqa: S102 - running our own documentation is the point
    finally:
        plt.close("all")
