"""A UMAP of the reference embedding, and query cells placed on it without refitting (pickle-free).

The reference UMAP is computed once (umap-learn) and its coordinates stored
with the model. A query cell is placed at the similarity-weighted mean of its
k nearest reference cells' coordinates (as Symphony and scArches place
queries), so no fitted UMAP object needs to be saved.
"""

from __future__ import annotations

import numpy as np

from .imputation import impute_from_neighbors
from .neighbors import NeighborsResults, l2_normalize

__all__ = ["place_on_reference", "reference_umap"]


def reference_umap(embedding: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.3, seed: int = 0
                   ) -> np.ndarray:
    """2-D UMAP (cosine metric) of a reference embedding, ``(n_ref, 2)`` float32 (seeded, reproducible)."""
    import umap

    emb = l2_normalize(embedding)
    if len(emb) <= 2:
        return np.zeros((len(emb), 2), dtype=np.float32)
    # spectral initialisation needs more cells than eigenvectors; tiny references start at random
    reducer = umap.UMAP(n_neighbors=int(min(n_neighbors, len(emb) - 1)), min_dist=min_dist, metric="cosine",
                        random_state=seed, n_components=2, init="spectral" if len(emb) > 10 else "random")
    return np.asarray(reducer.fit_transform(emb), dtype=np.float32)


def place_on_reference(neighbors: NeighborsResults, reference_coords: np.ndarray) -> np.ndarray:
    """Coordinates of query cells: the similarity-weighted mean of their reference neighbours' coordinates."""
    return impute_from_neighbors(neighbors, np.asarray(reference_coords, dtype=np.float32), weighted=True)
