"""Fixtures of the report tests: the hand-mapped query of the plotting tests, a query mapped by
``Concerto.map_query`` with levels and no batch column, the same cells annotated by the classifier; Agg backend."""

import copy
import importlib.util
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mapped_fixtures = _load("scc_report_mapped", Path(__file__).parents[1] / "plotting" / "_mapped_fixtures.py")
page_module = _load("scc_report_page", Path(__file__).with_name("_page.py"))


@pytest.fixture(scope="session")
def Page():
    """:class:`_page.Page`: a report read back (images, links, tables, sections, visible text)."""
    return page_module.Page


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


@pytest.fixture(scope="session")
def levels_model():
    """A model of two label keys (``cell_type_major`` > ``cell_type``) without a batch key, its reference UMAP
    the first two principal axes of the embedding (no UMAP fitted in tests), and 30 % of the cells held out as
    a query without a batch column. Shared: copy before changing."""
    from scconcerto import Concerto
    from scconcerto.datasets import simulate

    adata = simulate(500, 300, n_types=4, n_batches=1, n_major=2, seed=3)
    del adata.obs["batch"]
    is_query = np.random.default_rng(0).random(adata.n_obs) < 0.3
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    model = Concerto(ref, label_key=["cell_type_major", "cell_type"]).train(epochs=12, progress=False, device="cpu")
    emb = model.reference.embedding
    centred = emb - emb.mean(0)
    model.reference.umap = (centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T).astype(
        np.float32)
    return model, query


@pytest.fixture(scope="session")
def levels_mapped(levels_model):
    """``(model, query mapped with levels=['cell_type_major', 'cell_type'])`` by ``Concerto.map_query``."""
    model, query = levels_model
    mapped = model.map_query(query, levels=["cell_type_major", "cell_type"], device="cpu", copy=True)
    return model, mapped


@pytest.fixture(scope="session")
def annotated(levels_model):
    """``(model copy with a classifier of cell_type, the query annotated by Concerto.predict)``."""
    model, query = levels_model
    model = copy.deepcopy(model)
    model.fit_classifier(label_key="cell_type", epochs=4, seed=0, progress=False, device="cpu")
    return model, model.predict(query, device="cpu", copy=True)
