"""The faiss kNN transformer: scanpy's own graph, without pynndescent (which fails from 4,096 cells)."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from scconcerto import InputError
from scconcerto.metrics import ari
from scconcerto.tools import cluster
from scconcerto.search.knn_graph import FaissKNNTransformer, knn_distances


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_graph_equals_scanpys_exact_graph_below_its_approximate_threshold(metric):
    x = np.random.default_rng(0).normal(size=(400, 10)).astype(np.float32)
    exact, ours = ad.AnnData(obsm={"r": x}), ad.AnnData(obsm={"r": x})
    sc.pp.neighbors(exact, n_neighbors=12, use_rep="r", metric=metric)  # brute force below 4,096 cells
    sc.pp.neighbors(ours, use_rep="r", metric=metric, transformer=FaissKNNTransformer(12, metric))
    for key in ("distances", "connectivities"):
        diff = exact.obsp[key] - ours.obsp[key]
        assert abs(diff).max() < 1e-4, key
        assert exact.obsp[key].nnz == ours.obsp[key].nnz


def test_distances_are_nearest_first_without_the_cell_itself():
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    d = knn_distances(x, 6, metric="euclidean")
    assert d.shape == (50, 50) and d.nnz == 50 * 5
    rows = d.data.reshape(50, 5)
    assert (np.diff(rows, axis=1) >= 0).all()
    assert not (d.indices.reshape(50, 5) == np.arange(50)[:, None]).any()
    full = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(rows, np.sort(full, axis=1)[:, :5], rtol=1e-4)


def test_unsupported_metric_is_a_clear_error():
    with pytest.raises(InputError, match="cosine"):
        knn_distances(np.zeros((10, 2), np.float32), 3, metric="manhattan")


def test_cluster_beyond_4096_cells_recovers_the_groups():
    # scanpy's pynndescent path (from 4,096 cells, cosine) failed here with the pinned scanpy and scipy
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 4
    labels = np.repeat(np.arange(5), 840)
    x = (centers[labels] + rng.normal(size=(labels.size, 16))).astype(np.float32)
    adata = ad.AnnData(obsm={"X_concerto": x})
    cluster(adata, resolution=0.3)
    assert ari(labels, adata.obs["leiden"]) > 0.95
