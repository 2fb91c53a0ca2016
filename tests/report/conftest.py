"""Fixtures of the report tests: the hand-mapped query of the plotting tests, Agg backend."""

import importlib.util
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

_spec = importlib.util.spec_from_file_location(
    "scc_report_mapped", Path(__file__).parents[1] / "plotting" / "_mapped_fixtures.py")
mapped_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mapped_fixtures)


@pytest.fixture(scope="session")
def mapped_for_report(trained_model, sim):
    """``(model copy with a reference UMAP, mapped query with proteins)``; do not mutate."""
    return mapped_fixtures.build(trained_model, sim)


@pytest.fixture(scope="session")
def report_file(mapped_for_report, tmp_path_factory):
    """A report written once for the whole session (read-only for the tests)."""
    from scconcerto.report import mapping_report

    model, query = mapped_for_report
    path = tmp_path_factory.mktemp("report") / "report.html"
    return mapping_report(query, model, path, query_name="query.h5ad", model_name="ref_model/")
