"""The approximate index stored with a large reference: saved as bytes and read back (checked), and close to
exact search on simulated cells."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD

from scconcerto import InputError
from scconcerto.datasets import simulate
from scconcerto.search.ann import IVF_NPROBE, index_from_array, index_to_array, neighbor_recall, stored_index
from scconcerto.search.neighbors import knn


@pytest.fixture(scope="module")
def cells() -> tuple[np.ndarray, np.ndarray]:
    """Simulated cells (two sources) in a 32-dimensional PCA space: 3,000 reference cells and 500 queries."""
    adata = simulate(n_cells=3500, n_genes=400, seed=0)
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    x = x.multiply(1e4 / np.maximum(x.sum(axis=1), 1)).tocsr().log1p()
    emb = TruncatedSVD(32, random_state=0).fit_transform(x).astype(np.float32)
    return emb[:3000], emb[3000:]


def test_a_stored_index_reads_back_and_searches_the_same(cells):
    ref, query = cells
    index = stored_index(ref, seed=0)
    data = index_to_array(index)
    assert data.dtype == np.uint8 and data.ndim == 1
    again = index_from_array(data, *ref.shape)
    assert isinstance(again, faiss.IndexIVFFlat) and again.nprobe == min(IVF_NPROBE, again.nlist)
    a, b = knn(query, index, 5), knn(query, again, 5)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.similarities, b.similarities)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other reference", "not bytes", "exact index"])
def test_a_damaged_stored_index_is_an_input_error(cells, damage):
    ref, _ = cells
    data = index_to_array(stored_index(ref, seed=0))
    n, d = ref.shape
    if damage == "garbage":
        data = np.random.default_rng(0).integers(0, 256, len(data)).astype(np.uint8)
    elif damage == "truncated":
        data = data[: len(data) // 3]
    elif damage == "other reference":
        n = n + 1
    elif damage == "not bytes":
        data = data.astype(np.float32)
    else:  # an exact index is not what is stored
        flat = faiss.IndexFlatIP(d)
        flat.add(ref)
        data = index_to_array(flat)
    with pytest.raises(InputError, match="saved search index"):
        index_from_array(data, n, d)


def test_the_stored_index_finds_nearly_all_exact_neighbours(cells):
    ref, query = cells
    approx = knn(query, stored_index(ref, seed=0), 5)
    exact = knn(query, ref, 5)
    assert neighbor_recall(approx, exact) >= 0.95
    # the similarities it returns are the cosines of the rows it returns
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosines = np.einsum("qd,qkd->qk", unit(query), unit(ref)[approx.indices])
    np.testing.assert_allclose(approx.similarities, cosines, atol=1e-5)
