import faiss
import numpy as np

from scconcerto.search.neighbors import build_index, ivf_centroids, knn


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 16))
    return (centres[rng.integers(0, 12, n)] + 0.3 * rng.normal(size=(n, 16))).astype(np.float32)


def test_an_ivf_index_rebuilt_from_its_centroids_searches_the_same(monkeypatch):
    ref, query = _clustered(4000, 0), _clustered(300, 1)
    first = build_index(ref, kind="ivf", seed=3)
    centroids = ivf_centroids(first)
    assert centroids.shape == (faiss.extract_index_ivf(first).nlist, 16) and centroids.dtype == np.float32

    def no_kmeans(*args, **kwargs):
        raise AssertionError("k-means ran although the centroids were given")

    monkeypatch.setattr(faiss.IndexIVFFlat, "train", no_kmeans)
    again = build_index(ref, kind="ivf", seed=3, centroids=centroids)
    a, b = knn(query, first, 5), knn(query, again, 5)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.similarities, b.similarities, atol=1e-6)
    # and it is a good approximation of the exact search
    exact = knn(query, ref, 5)
    recall = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a.indices, exact.indices)])
    assert recall > 0.9
