"""k-nearest-neighbour search on embeddings (faiss), returning a typed result.

faiss is used because it is the best-kept library for exact and approximate
inner-product search on CPU and GPU; cosine similarity is the inner product
of L2-normalized vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from .._errors import InputError

IndexKind = Literal["flat", "ivf", "hnsw"]


@dataclass(frozen=True)
class NeighborsResults:
    """Neighbours of each query row.

    Attributes
    ----------
    indices
        ``(n_query, k)`` int64 row numbers into the reference.
    similarities
        ``(n_query, k)`` float32 cosine similarities, best first.
    """

    indices: np.ndarray
    similarities: np.ndarray

    @property
    def n_neighbors(self) -> int:
        return int(self.indices.shape[1])


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization as float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def build_index(reference: np.ndarray, kind: IndexKind = "flat", nlist: int | None = None,
                nprobe: int = 16, hnsw_m: int = 32, seed: int = 0, centroids: np.ndarray | None = None
                ) -> faiss.Index:
    """Build a faiss inner-product index over L2-normalized ``reference`` rows.

    ``flat`` is exact; ``ivf`` (inverted lists, trained by k-means) and
    ``hnsw`` (graph) are approximate and meant for references of millions of cells.
    ``centroids`` (``ivf`` only; from :func:`ivf_centroids`) skip the k-means: the
    index is rebuilt by assigning the rows to them.
    """
    ref = l2_normalize(reference)
    n, d = ref.shape
    if n == 0:
        raise InputError("The reference embedding is empty: there is nothing to search.")
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(d)
        if centroids is not None:
            quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
            nlist = quantizer.ntotal
        else:
            nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39 or 1))
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        if centroids is None:
            index.train(ref)
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:
        raise InputError(f"Unknown index kind {kind!r}; use 'flat', 'ivf' or 'hnsw'.")
    index.add(ref)
    return index


def ivf_centroids(index: faiss.Index) -> np.ndarray:
    """The ``(nlist, d)`` float32 centroids of an IVF index (to store, and rebuild it with ``build_index``)."""
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def knn(query: np.ndarray, reference: np.ndarray | faiss.Index, k: int = 5,
        exclude_self: bool = False, kind: IndexKind = "flat", self_rows: np.ndarray | None = None
        ) -> NeighborsResults:
    """Cosine k-NN of ``query`` rows among ``reference`` rows (or a built index).

    With ``exclude_self`` each query row's own match is removed (the k neighbours
    are the k nearest *other* rows): the query is the reference itself, or, given
    ``self_rows``, query row ``i`` is reference row ``self_rows[i]``.
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    index = reference if isinstance(reference, faiss.Index) else build_index(reference, kind)
    n_ref = index.ntotal
    extra = 1 if exclude_self else 0
    k_eff = min(k + extra, n_ref)
    q = l2_normalize(query)
    sims, idx = index.search(q, k_eff)
    if exclude_self:
        own_rows = np.arange(len(q)) if self_rows is None else np.asarray(self_rows, dtype=np.int64)
        own = idx == own_rows[:, None]
        # drop the own match if present, else the last (worst) column
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k_eff - 1)
        keep = np.ones_like(idx, dtype=bool)
        keep[np.arange(len(q)), drop] = False
        idx = idx[keep].reshape(len(q), k_eff - 1)
        sims = sims[keep].reshape(len(q), k_eff - 1)
    return NeighborsResults(indices=idx.astype(np.int64), similarities=sims.astype(np.float32))
