import numpy as np

from scconcerto.search.neighbors import build_index, knn


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 16))
    return (centres[rng.integers(0, 12, n)] + 0.3 * rng.normal(size=(n, 16))).astype(np.float32)


def test_an_ivf_index_approximates_the_exact_search():
    ref, query = _clustered(4000, 0), _clustered(300, 1)
    a = knn(query, build_index(ref, kind="ivf", seed=3), 5)
    exact = knn(query, ref, 5)
    recall = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a.indices, exact.indices)])
    assert recall > 0.9
