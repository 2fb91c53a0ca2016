"""A kNN transformer for :func:`scanpy.pp.neighbors` backed by the project's faiss search.

``scanpy.pp.neighbors`` searches neighbours with pynndescent from 4,096 cells
(cosine) or 8,192 cells (euclidean); with the pinned scanpy and scipy that path
fails (``'csr_array' object has no attribute 'getnnz'``). Passing
:class:`FaissKNNTransformer` as ``transformer=`` keeps scanpy's graph
(UMAP connectivities, ``obsp`` layout, ``uns['neighbors']``) and replaces only
the search: exact, or an HNSW index where the one rule of
:func:`~scconcerto.search.neighbors.index_kind` makes the search approximate.

Examples
--------
>>> sc.pp.neighbors(adata, use_rep="X_concerto",
...                 transformer=FaissKNNTransformer(n_neighbors=15, metric="cosine"))  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin

from .._errors import InputError

__all__ = ["FaissKNNTransformer", "knn_distances"]

METRICS = ("cosine", "euclidean")


def _drop_self(idx: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own match (or, when the search missed it, its last column), keeping ``k`` columns."""
    n = idx.shape[0]
    own = idx == np.arange(n)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), idx.shape[1] - 1)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(n), drop] = False
    return idx[keep].reshape(n, -1)[:, :k], dist[keep].reshape(n, -1)[:, :k]


def _euclidean(x: np.ndarray, k: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatL2(x.shape[1]) if exact else faiss.IndexHNSWFlat(x.shape[1], 32)
    if not exact:
        index.hnsw.efSearch = 128
    index.add(x)
    sq, idx = index.search(x, k + 1)
    return idx.astype(np.int64), np.sqrt(np.maximum(sq, 0.0))


def knn_distances(x: np.ndarray, n_neighbors: int, metric: str = "cosine") -> sp.csr_matrix:
    """``(n, n)`` sparse distances to each row's ``n_neighbors - 1`` nearest other rows, nearest first.

    Parameters
    ----------
    x
        ``(n_cells, n_dims)`` numeric, finite array.
    n_neighbors
        Neighbours per cell counting the cell itself (scanpy's convention).
    metric
        ``"cosine"`` (1 - cosine similarity) or ``"euclidean"``.

    Returns
    -------
    scipy.sparse.csr_matrix
        Float32; the entries of each row are stored in neighbour order (nearest
        first), not by column, as :func:`scanpy.pp.neighbors` expects from a transformer.
    """
    from .neighbors import index_kind, knn

    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not supported by the faiss neighbour graph; use one of {METRICS}.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    k = int(n_neighbors) - 1
    if k < 1 or k >= n:
        raise InputError(f"n_neighbors={n_neighbors} needs between 2 and {n} cells; got {n} cells.")
    kind = index_kind(n, n, approximate="hnsw")
    exact = kind == "flat"
    if metric == "cosine":
        res = knn(x, x, k=k, exclude_self=True, kind=kind)
        idx, dist = res.indices, np.clip(1.0 - res.similarities, 0.0, 2.0)
    else:
        idx, dist = _drop_self(*_euclidean(x, k, exact), k)
    if (idx < 0).any():  # an approximate search that found fewer than k neighbours
        raise InputError("The neighbour search returned fewer neighbours than asked for; use fewer n_neighbors.")
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    return sp.csr_matrix((dist.astype(np.float32).ravel(), idx.ravel(), indptr), shape=(n, n))


class FaissKNNTransformer(TransformerMixin, BaseEstimator):
    """scikit-learn style kNN transformer (faiss search) for ``scanpy.pp.neighbors(transformer=...)``.

    Parameters
    ----------
    n_neighbors
        Neighbours per cell, the cell itself included (as ``scanpy.pp.neighbors``).
    metric
        ``"cosine"`` or ``"euclidean"``.
    """

    def __init__(self, n_neighbors: int = 15, metric: str = "cosine"):
        self.n_neighbors = n_neighbors
        self.metric = metric

    def fit(self, x: np.ndarray, y: object = None) -> "FaissKNNTransformer":
        self.fit_x_ = np.asarray(x)
        return self

    def transform(self, x: np.ndarray) -> sp.csr_matrix:
        if x is not self.fit_x_ and not np.array_equal(np.asarray(x), self.fit_x_):
            raise InputError("FaissKNNTransformer transforms the data it was fitted on only.")
        return knn_distances(self.fit_x_, self.n_neighbors, self.metric)

    def fit_transform(self, x: np.ndarray, y: object = None, **fit_params: object) -> sp.csr_matrix:
        return self.fit(x).transform(x)
