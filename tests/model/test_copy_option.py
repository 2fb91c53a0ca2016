"""scanpy's ``copy=`` on the functions that write into an AnnData; the model's fingerprint."""

import copy
import inspect

import numpy as np
import pytest

from scconcerto import Concerto
from scconcerto.tools import cluster


@pytest.fixture(scope="module")
def model(trained_model):
    return copy.deepcopy(trained_model)  # the shared fixture must not change


def test_map_query_with_copy_leaves_the_query_alone_and_returns_the_mapped_copy(model, sim):
    query = sim[sim.obs["batch"] == "batch_1"][:80].copy()
    columns, obsm = list(query.obs.columns), list(query.obsm)
    mapped = model.map_query(query, place=False, device="cpu", copy=True)
    assert list(query.obs.columns) == columns and list(query.obsm) == obsm and "scconcerto_mapping" not in query.uns
    assert mapped is not query and {"cell_type_pred", "cell_type_unknown"} <= set(mapped.obs.columns)
    in_place = query.copy()
    result = model.map_query(in_place, place=False, device="cpu")
    assert result.info["k"] == mapped.uns["scconcerto_mapping"]["k"]
    np.testing.assert_array_equal(in_place.obs["cell_type_pred"], mapped.obs["cell_type_pred"])
    np.testing.assert_allclose(in_place.obsm["X_concerto"], mapped.obsm["X_concerto"])
    assert mapped.uns["scconcerto_mapping"]["model_id"] == in_place.uns["scconcerto_mapping"]["model_id"] \
        == model.model_id
    assert "copy" in inspect.signature(Concerto.map_query).parameters


def test_model_id_survives_save_and_load_and_differs_between_models(model, sim, tmp_path):
    model.save(tmp_path / "m")
    assert Concerto.load(tmp_path / "m").model_id == model.model_id
    other = Concerto(sim, batch_key="batch", label_key="cell_type", seed=3)
    assert other.model_id != model.model_id and len(model.model_id) == 16


def test_cluster_with_copy(sim):
    rng = np.random.default_rng(0)
    adata = sim[:200].copy()
    adata.obsm["X_concerto"] = rng.normal(size=(200, 8)).astype(np.float32)
    out = cluster(adata, resolution=0.5, copy=True)
    assert "leiden" not in adata.obs and "leiden" in out.obs
    assert cluster(adata, resolution=0.5) is None and "leiden" in adata.obs
    np.testing.assert_array_equal(adata.obs["leiden"], out.obs["leiden"])
