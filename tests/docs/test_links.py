"""The project's documents point at files that exist: markdown links and the ``*.md`` paths they name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("benchmarks/*.md"),
                    *ROOT.glob("benchmarks/report/*.md")])
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
#: ``docs/x.md``-like paths in backticks or plain text (documents naming other documents)
NAMED = re.compile(r"(?<![\w/.-])((?:docs|benchmarks)/[\w./-]+\.md)\b")


def _targets(doc: Path) -> list[tuple[str, Path]]:
    text = doc.read_text()
    out = [(link, doc.parent / link) for link in LINK.findall(text) if "://" not in link and
           not link.startswith("mailto:")]
    out += [(named, ROOT / named) for named in NAMED.findall(text)]
    return out


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_named_document_exists(doc: Path) -> None:
    missing = [name for name, target in _targets(doc) if not target.exists()]
    assert not missing, f"{doc.relative_to(ROOT)} points at missing files: {missing}"


def test_documents_named_in_the_code_exist() -> None:
    missing = [f"{path.relative_to(ROOT)}: {named}" for path in sorted(ROOT.glob("src/**/*.py"))
               for named in NAMED.findall(path.read_text()) if not (ROOT / named).exists()]
    assert not missing, f"the code names missing documents: {missing}"


def test_the_link_pattern_finds_links_and_named_documents(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("see [a](a.png), [web](https://x.org/y.md), `docs/design.md` and [b](sub/b.md#part)")
    assert [name for name, _ in _targets(doc)] == ["a.png", "sub/b.md", "docs/design.md"]
