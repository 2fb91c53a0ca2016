"""ARI / NMI against hand-computed values, and Leiden on separated blobs."""

from __future__ import annotations

import numpy as np
import pytest

from scconcerto._errors import InputError
from scconcerto.metrics import ari, best_leiden, leiden_clusters, nmi


def _blobs(n_per: int = 100, n_blobs: int = 3, dim: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_blobs), n_per)
    x = rng.normal(size=(n_per * n_blobs, dim))
    x[np.arange(len(labels)), labels] += 10.0
    return x, labels


def test_identical_partitions_up_to_relabeling():
    a = np.array([0, 0, 1, 1, 2, 2, 2])
    b = np.array(["z", "z", "x", "x", "y", "y", "y"])
    assert ari(a, b) == pytest.approx(1.0)
    assert nmi(a, b) == pytest.approx(1.0)


def test_ari_by_hand():
    # contingency [[2,0],[1,1]]: index 1, expected 2*3/6 = 1, max 2.5 -> 0
    assert ari([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    # contingency [[2,1,0],[0,1,2]]: index 2, expected 6*3/15 = 1.2, max 4.5 -> 0.8/3.3
    assert ari([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(0.8 / 3.3)


def test_nmi_by_hand():
    # independent partitions: MI = 0
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    # MI = ln 2, H(L) = ln 2, H(C) = 1.5 ln 2 -> ln2 / (1.25 ln2) = 0.8
    assert nmi([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(0.8)


def test_leiden_recovers_separated_blobs():
    x, labels = _blobs()
    clusters = leiden_clusters(x, resolution=0.5, n_neighbors=15, seed=0)
    assert clusters.shape == labels.shape and clusters.dtype == np.int64
    assert ari(labels, clusters) == pytest.approx(1.0)
    np.testing.assert_array_equal(clusters, leiden_clusters(x, resolution=0.5, seed=0))


def test_best_leiden_scans_resolutions():
    x, labels = _blobs()
    result = best_leiden(x, labels, resolutions=(0.3, 1.0, 3.0))
    table = result["table"]
    assert list(table.index) == [0.3, 1.0, 3.0]
    assert result["best_ari"] == pytest.approx(1.0)
    assert result["best_nmi"] == pytest.approx(1.0)
    assert result["best_ari_resolution"] == 0.3
    # a high resolution over-splits the three blobs
    assert table.loc[3.0, "n_clusters"] > 3
    assert table.loc[3.0, "ari"] < 0.9
    assert result["median_ari"] == pytest.approx(float(np.median(table["ari"])))
    assert ari(labels, result["clusters"]) == pytest.approx(1.0)


def test_bad_inputs_raise():
    with pytest.raises(InputError):
        ari([0, 1, 2], [0, 1])
    x, labels = _blobs(n_per=5)
    with pytest.raises(InputError):
        best_leiden(x, labels[:-1])
    with pytest.raises(InputError):
        leiden_clusters(x, n_neighbors=100)


def test_the_benchmark_leiden_is_the_one_users_run():
    from scconcerto.tools import leiden, leiden_sweep

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 10)).astype(np.float32)  # no structure: any difference of graph or Leiden shows
    labels = rng.integers(0, 3, 300)
    np.testing.assert_array_equal(leiden_clusters(x, resolution=1.0, seed=1), leiden(x, resolution=1.0, seed=1))
    result = best_leiden(x, labels, resolutions=(0.5, 1.0), seed=1)
    sweep = leiden_sweep(x, [0.5, 1.0], labels=labels, seed=1)
    np.testing.assert_array_equal(result["table"]["n_clusters"], sweep.table["n_clusters"])
    np.testing.assert_allclose(result["table"]["ari"], sweep.table["ari"])
    np.testing.assert_array_equal(result["clusters"], sweep.clusters[result["best_nmi_resolution"]])
