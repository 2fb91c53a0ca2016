"""docs/api.md is generated from the docstrings (docs/build_api.py) and must be current."""

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _builder():
    spec = importlib.util.spec_from_file_location("build_api", DOCS / "build_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_page_is_current():
    page = (DOCS / "api.md").read_text(encoding="utf-8")
    assert page == _builder().build(), "docs/api.md is out of date: run `python docs/build_api.py`"


def test_api_page_documents_the_public_api():
    import scconcerto as scc

    page = (DOCS / "api.md").read_text(encoding="utf-8")
    for name in ("Concerto.map_query", "Concerto.predict", "scc.read", "scc.settings", "scc.tl.cluster",
                 "scc.pl.mapping_umap", "scc.datasets.simulate"):
        assert f"`{name}" in page, name
    for name in scc.tl.__all__ + scc.pl.__all__:
        obj = getattr(scc.tl if name in scc.tl.__all__ else scc.pl, name)
        if callable(obj):
            assert f".{name}(" in page or f".{name}`" in page, name
    assert "(no docstring)" not in page
