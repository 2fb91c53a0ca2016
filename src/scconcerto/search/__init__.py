"""Nearest-neighbour search on embeddings: exact (chunked matrix products, on the CPU or a GPU) and approximate (IVF, HNSW) cosine k-NN,
a typed result, the one rule choosing between exact and approximate search (:func:`index_kind`), and the faiss
kNN transformer for ``scanpy.pp.neighbors``. The lowest layer of the package above its helpers: it knows no
AnnData, no model."""

from .neighbors import (
    NeighborsResults,
    build_index,
    exact_search,
    index_kind,
    knn,
    l2_normalize,
    search_device,
)

__all__ = ["NeighborsResults", "build_index", "exact_search", "index_kind", "knn", "l2_normalize",
           "search_device"]
