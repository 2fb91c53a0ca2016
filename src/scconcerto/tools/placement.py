"""A UMAP of the reference embedding, and query cells placed on it without refitting (pickle-free).

The reference UMAP is computed once, when the reference is built (umap-learn, on
a neighbour graph searched with faiss rather than umap's own pynndescent), on at
most ``UMAP_FIT_CELLS`` reference cells (a seeded sample; the others are placed
as query cells are), and its coordinates are stored with the model. A query cell is placed at the similarity-weighted mean of its
k nearest reference cells' coordinates (as Symphony and scArches place
queries), so no fitted UMAP object needs to be saved.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._random import sample_rows
from .imputation import impute_from_neighbors
from ..search.neighbors import NeighborsResults, index_kind, knn, l2_normalize

__all__ = ["place_on_reference", "reference_umap"]

#: The reference UMAP is fitted on at most this many cells (a seeded sample); the others are placed on it.
UMAP_FIT_CELLS = 50_000


def reference_umap(embedding: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.3, seed: int = 0,
                   max_cells: int = UMAP_FIT_CELLS) -> np.ndarray:
    """2-D UMAP (cosine metric) of a reference embedding, ``(n_ref, 2)`` float32 (seeded, reproducible).

    Above ``max_cells`` cells the UMAP is fitted on a seeded sample of ``max_cells`` and every other cell
    is placed on it (:func:`place_on_reference`, among its ``n_neighbors`` nearest sampled cells).
    """
    emb = l2_normalize(embedding)
    if len(emb) > max_cells:
        sample = sample_rows(len(emb), max_cells, seed)
        coords = np.empty((len(emb), 2), dtype=np.float32)
        coords[sample] = reference_umap(emb[sample], n_neighbors, min_dist, seed, max_cells)
        rest = np.setdiff1d(np.arange(len(emb)), sample)
        kind = index_kind(len(sample), len(rest), approximate="hnsw")
        coords[rest] = place_on_reference(knn(emb[rest], emb[sample], n_neighbors, kind=kind), coords[sample])
        return coords
    return _fitted_umap(emb, n_neighbors, min_dist, seed)


def _fitted_umap(emb: np.ndarray, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    import umap

    if len(emb) <= 2:
        return np.zeros((len(emb), 2), dtype=np.float32)
    k = int(min(n_neighbors, len(emb) - 1))
    # umap's graph counts each cell as its own first neighbour, at distance 0
    found = knn(emb, emb, k - 1, exclude_self=True, kind=index_kind(len(emb), len(emb), approximate="hnsw"))
    own = np.arange(len(emb), dtype=np.int64)[:, None]
    graph = (np.hstack([own, found.indices]),
             np.hstack([np.zeros_like(own, dtype=np.float32), np.clip(1.0 - found.similarities, 0.0, 2.0)]), None)
    # spectral initialisation needs more cells than eigenvectors; tiny references start at random
    reducer = umap.UMAP(n_neighbors=k, min_dist=min_dist, metric="cosine", random_state=seed, n_components=2,
                        init="spectral" if len(emb) > 10 else "random", precomputed_knn=graph)
    with warnings.catch_warnings():  # expected: a seed runs umap single-threaded; queries are placed without transform
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        return np.asarray(reducer.fit_transform(emb), dtype=np.float32)


def place_on_reference(neighbors: NeighborsResults, reference_coords: np.ndarray) -> np.ndarray:
    """Coordinates of query cells: the similarity-weighted mean of their reference neighbours' coordinates."""
    return impute_from_neighbors(neighbors, np.asarray(reference_coords, dtype=np.float32), weighted=True)
