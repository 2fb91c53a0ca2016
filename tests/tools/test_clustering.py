import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scconcerto import InputError
from scconcerto.metrics import ari
from scconcerto.tools import cluster, leiden, leiden_sweep


def _blobs(n_per: int = 60, n_blobs: int = 4, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_blobs, dim)) * 4
    labels = np.repeat(np.arange(n_blobs), n_per)
    x = centers[labels] + rng.normal(size=(len(labels), dim))
    return x.astype(np.float32), labels


def test_leiden_recovers_well_separated_groups_and_is_reproducible():
    x, labels = _blobs()
    clusters = leiden(x, resolution=0.5)
    assert ari(labels, clusters) == pytest.approx(1.0)
    np.testing.assert_array_equal(clusters, leiden(x, resolution=0.5))
    assert clusters.dtype == np.int64 and set(clusters) == {0, 1, 2, 3}


def test_sweep_reports_silhouette_per_resolution_and_picks_the_true_number_of_groups():
    x, labels = _blobs()
    sweep = leiden_sweep(x, [0.3, 1.0, 6.0], labels=labels)
    table = sweep.table
    assert list(table.index) == [0.3, 1.0, 6.0]
    assert list(table.columns) == ["n_clusters", "silhouette", "ari", "nmi"]
    assert table.loc[6.0, "n_clusters"] > table.loc[0.3, "n_clusters"] == 4
    # silhouette of the true partition beats the over-split one, and equals sklearn's on the clusters
    from sklearn.metrics import silhouette_score

    assert table.loc[0.3, "silhouette"] == pytest.approx(silhouette_score(x, sweep.clusters[0.3]), rel=1e-5)
    assert table.loc[0.3, "silhouette"] > table.loc[6.0, "silhouette"]
    assert sweep.table.loc[sweep.best_resolution, "n_clusters"] == 4
    assert table.loc[0.3, "ari"] == pytest.approx(1.0)


def test_single_cluster_has_nan_silhouette():
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    sweep = leiden_sweep(x, [1e-4])
    assert sweep.table.loc[1e-4, "n_clusters"] == 1 and np.isnan(sweep.table.loc[1e-4, "silhouette"])
    assert sweep.best_resolution == 1e-4


def test_cluster_writes_obs_and_the_sweep_into_the_anndata():
    x, labels = _blobs()
    adata = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(len(x))]), obsm={"X_concerto": x})
    assert cluster(adata, resolution=0.5) is None
    assert isinstance(adata.obs["leiden"].dtype, pd.CategoricalDtype)
    assert ari(labels, adata.obs["leiden"]) == pytest.approx(1.0)
    assert adata.uns["leiden"]["resolution"] == 0.5
    sweep = cluster(adata, resolution=None, sweep=[0.3, 6.0], key_added="cl")
    assert sweep.best_resolution == 0.3
    assert adata.uns["cl"]["resolution"] == 0.3
    np.testing.assert_array_equal(adata.uns["cl_sweep"]["resolution"], [0.3, 6.0])
    assert adata.obs["cl_6"].nunique() == sweep.table.loc[6.0, "n_clusters"]
    np.testing.assert_array_equal(adata.obs["cl"].astype(int), sweep.clusters[0.3])


def test_leiden_on_the_concerto_embedding_finds_the_simulated_types(trained_model, sim):
    emb = trained_model.embed(sim, device="cpu")
    sweep = leiden_sweep(emb, [0.1, 0.3, 0.6], labels=sim.obs["cell_type"].to_numpy())
    assert sweep.table["ari"].max() > 0.7  # 4 simulated types, 2 batches


def test_clustering_errors_are_clear():
    x, _ = _blobs(n_per=5)
    with pytest.raises(InputError, match="positive"):
        leiden(x, resolution=0)
    with pytest.raises(InputError, match="too few"):
        leiden(x[:10], n_neighbors=15)
    with pytest.raises(InputError, match="repeated"):
        leiden_sweep(x, [1.0, 1.0])
    with pytest.raises(InputError, match="X_concerto"):
        cluster(ad.AnnData(obs=pd.DataFrame(index=["a", "b"])))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="finite"):
        leiden(bad)
