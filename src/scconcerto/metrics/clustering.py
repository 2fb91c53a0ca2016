"""Clustering agreement metrics and Leiden clustering of an embedding.

``ari`` and ``nmi`` compare two partitions and are invariant to relabeling.
``best_leiden`` clusters an embedding at several resolutions (one neighbour
graph, several Leiden runs) and reports ARI/NMI against known labels, as scib
does when it optimizes the clustering resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .._errors import InputError
from .integration import _check_embedding, _codes

__all__ = ["ari", "nmi", "leiden_clusters", "best_leiden", "DEFAULT_RESOLUTIONS"]

#: Resolutions scanned by :func:`best_leiden`: 0.2, 0.4, ..., 2.0.
DEFAULT_RESOLUTIONS: tuple[float, ...] = tuple(round(0.2 * i, 1) for i in range(1, 11))

_REP = "X_scconcerto_metrics"


def _partition_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a)
    y = np.asarray(b)
    if x.ndim != 1 or y.ndim != 1:
        raise InputError(f"Partitions must be 1-d label vectors, got shapes {x.shape} and {y.shape}.")
    if len(x) != len(y):
        raise InputError(
            f"The two partitions have different lengths ({len(x)} and {len(y)}): "
            "give one label per cell, in the same order."
        )
    if len(x) == 0:
        raise InputError("The partitions are empty: there is nothing to compare.")
    # integer codes make mixed label types (str vs int) comparable
    return _codes(x, len(x), "labels")[0], _codes(y, len(y), "clusters")[0]


def ari(labels: Sequence[Any] | np.ndarray, clusters: Sequence[Any] | np.ndarray) -> float:
    """Adjusted Rand index between two partitions of the same cells.

    Parameters
    ----------
    labels
        Reference partition (e.g. cell types), ``(n_cells,)``.
    clusters
        Partition to evaluate (e.g. Leiden clusters), ``(n_cells,)``.

    Returns
    -------
    float
        ARI: 1 for identical partitions (up to relabeling), about 0 for
        independent ones (it can be negative).
    """
    x, y = _partition_pair(labels, clusters)
    return float(adjusted_rand_score(x, y))


def nmi(labels: Sequence[Any] | np.ndarray, clusters: Sequence[Any] | np.ndarray) -> float:
    """Normalized mutual information between two partitions (arithmetic mean norm).

    Parameters
    ----------
    labels
        Reference partition (e.g. cell types), ``(n_cells,)``.
    clusters
        Partition to evaluate, ``(n_cells,)``.

    Returns
    -------
    float
        NMI in ``[0, 1]``: 1 for identical partitions up to relabeling.
    """
    x, y = _partition_pair(labels, clusters)
    return float(normalized_mutual_info_score(x, y, average_method="arithmetic"))


def _neighbor_graph(embedding: np.ndarray, n_neighbors: int, seed: int, metric: str):
    """AnnData holding ``embedding`` in ``obsm`` and its scanpy neighbour graph."""
    import anndata as ad
    import scanpy as sc

    from ..search.knn_graph import FaissKNNTransformer

    x = _check_embedding(embedding, min_rows=3)
    if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 2:
        raise InputError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}.")
    if n_neighbors > x.shape[0]:
        raise InputError(
            f"n_neighbors={n_neighbors} is too large for {x.shape[0]} cells: "
            f"use n_neighbors <= {x.shape[0]}."
        )
    adata = ad.AnnData(
        obs=pd.DataFrame(index=pd.RangeIndex(x.shape[0]).astype(str)),
        obsm={_REP: np.ascontiguousarray(x, dtype=np.float32)},
    )
    sc.pp.neighbors(adata, use_rep=_REP, metric=metric, random_state=seed,
                    transformer=FaissKNNTransformer(int(n_neighbors), metric))
    return adata


def _leiden(adata, resolution: float, seed: int) -> np.ndarray:
    import scanpy as sc

    if resolution <= 0:
        raise InputError(f"resolution must be positive, got {resolution}.")
    sc.tl.leiden(adata, resolution=float(resolution), flavor="igraph", n_iterations=2,
                 random_state=seed, key_added="_leiden", directed=False)
    return adata.obs["_leiden"].astype(int).to_numpy(dtype=np.int64)


def leiden_clusters(embedding: np.ndarray, resolution: float = 1.0, n_neighbors: int = 15,
                    seed: int = 0, metric: str = "euclidean") -> np.ndarray:
    """Leiden clusters of an embedding (scanpy neighbour graph, igraph Leiden).

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    resolution
        Leiden resolution; higher gives more clusters.
    n_neighbors
        Neighbours per cell in the graph (``sc.pp.neighbors``).
    seed
        Random state of the neighbour search and of Leiden.
    metric
        Distance of the neighbour search (faiss): ``"euclidean"`` or ``"cosine"``.

    Returns
    -------
    numpy.ndarray
        ``(n_cells,)`` int64 cluster ids ``0..n_clusters-1``.
    """
    return _leiden(_neighbor_graph(embedding, n_neighbors, seed, metric), resolution, seed)


def best_leiden(embedding: np.ndarray, labels: Sequence[Any] | np.ndarray,
                resolutions: Sequence[float] = DEFAULT_RESOLUTIONS, n_neighbors: int = 15,
                seed: int = 0, metric: str = "euclidean") -> dict[str, Any]:
    """Leiden at several resolutions, scored by ARI and NMI against ``labels``.

    The neighbour graph is built once; Leiden is run once per resolution.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    labels
        Reference partition (cell types), ``(n_cells,)``.
    resolutions
        Leiden resolutions to scan (default 0.2, 0.4, ..., 2.0).
    n_neighbors
        Neighbours per cell in the graph.
    seed
        Random state of the neighbour search and of Leiden.
    metric
        Distance of the neighbour search.

    Returns
    -------
    dict
        ``table``: a DataFrame indexed by resolution with columns ``ari``,
        ``nmi`` and ``n_clusters``; ``best_ari`` and ``best_ari_resolution``,
        ``best_nmi`` and ``best_nmi_resolution`` (the maxima, each with its
        resolution; the first one on ties); ``median_ari`` and ``median_nmi``
        (medians over resolutions); ``clusters``: the cluster ids at
        ``best_nmi_resolution`` (scib chooses the resolution by NMI).
    """
    res = [float(r) for r in resolutions]
    if len(res) == 0:
        raise InputError("resolutions is empty: give at least one Leiden resolution.")
    if any(r <= 0 for r in res):
        raise InputError(f"Leiden resolutions must be positive, got {res}.")
    x = _check_embedding(embedding, min_rows=3)
    codes, _ = _codes(labels, x.shape[0], "labels")
    adata = _neighbor_graph(x, n_neighbors, seed, metric)
    partitions = [_leiden(adata, r, seed) for r in res]  # loop over resolutions
    table = pd.DataFrame(
        {
            "ari": [adjusted_rand_score(codes, p) for p in partitions],
            "nmi": [normalized_mutual_info_score(codes, p, average_method="arithmetic")
                    for p in partitions],
            "n_clusters": [int(p.max()) + 1 for p in partitions],
        },
        index=pd.Index(res, name="resolution"),
    )
    i_ari = int(np.argmax(table["ari"].to_numpy()))
    i_nmi = int(np.argmax(table["nmi"].to_numpy()))
    return {
        "table": table,
        "best_ari": float(table["ari"].iloc[i_ari]),
        "best_ari_resolution": res[i_ari],
        "best_nmi": float(table["nmi"].iloc[i_nmi]),
        "best_nmi_resolution": res[i_nmi],
        "median_ari": float(table["ari"].median()),
        "median_nmi": float(table["nmi"].median()),
        "clusters": partitions[i_nmi],
    }
