"""Fixtures of the plotting tests: a hand-mapped query (see ``_mapped_fixtures.py``), Agg backend."""

import importlib.util
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

_spec = importlib.util.spec_from_file_location("scc_plotting_mapped", Path(__file__).with_name("_mapped_fixtures.py"))
mapped_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mapped_fixtures)


@pytest.fixture(scope="session")
def mapped(trained_model, sim):
    """``(model copy with a reference UMAP, mapped query)``; do not mutate."""
    return mapped_fixtures.build(trained_model, sim)


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")
