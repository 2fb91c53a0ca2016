"""Clustering agreement metrics and the package's one Leiden clustering of an embedding.

``ari`` and ``nmi`` compare two partitions and are invariant to relabeling.
:func:`neighbor_graph` (scanpy's kNN graph, neighbours searched by faiss) and
:func:`leiden_on_graph` (leidenalg) are the Leiden that :mod:`scconcerto.tools.clustering`
and ``scconcerto cluster`` run; ``best_leiden`` runs it at several resolutions (one
neighbour graph, several Leiden runs) and reports ARI/NMI against known labels, as scib
does when it optimizes the clustering resolution, so benchmarks score the code users run.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .._errors import InputError
from .integration import _codes

__all__ = ["ari", "nmi", "neighbor_graph", "leiden_on_graph", "leiden_clusters", "best_leiden", "DEFAULT_RESOLUTIONS"]

#: Resolutions scanned by :func:`best_leiden`: 0.2, 0.4, ..., 2.0.
DEFAULT_RESOLUTIONS: tuple[float, ...] = tuple(round(0.2 * i, 1) for i in range(1, 11))

_REP = "X_rep"


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


def neighbor_graph(embedding: np.ndarray, n_neighbors: int = 15, metric: str = "cosine",
                   seed: int = 0) -> ad.AnnData:
    """A throwaway AnnData holding ``embedding`` and its scanpy kNN graph (``obsp['connectivities']``).

    The neighbours are searched by faiss (:class:`~scconcerto.search.knn_graph.FaissKNNTransformer`).

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding, e.g. ``adata.obsm['X_concerto']``.
    n_neighbors
        Neighbours per cell.
    metric
        Distance of the neighbour search: ``"cosine"`` (Concerto embeddings lie on the unit sphere) or
        ``"euclidean"``.
    seed
        Recorded with the graph (the faiss search is deterministic).
    """
    import scanpy as sc

    from ..search.knn_graph import METRICS, FaissKNNTransformer

    x = np.asarray(embedding)
    if x.ndim != 2 or x.shape[1] == 0:
        raise InputError(f"The embedding must be a 2-d (cells x dims) array, got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise InputError("The embedding must be numeric and finite (it holds NaN, infinite or non-numeric values).")
    if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 2:
        raise InputError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}.")
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not supported; use one of {METRICS}.")
    if x.shape[0] <= n_neighbors:
        raise InputError(f"{x.shape[0]} cells are too few for n_neighbors={n_neighbors}; use fewer neighbours "
                         f"(at most {max(x.shape[0] - 1, 0)}).")
    graph = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(x.shape[0]).astype(str)),
                       obsm={_REP: np.ascontiguousarray(x, dtype=np.float32)})
    sc.pp.neighbors(graph, use_rep=_REP, metric=metric, random_state=seed,
                    transformer=FaissKNNTransformer(int(n_neighbors), metric))
    return graph


def leiden_on_graph(graph: ad.AnnData, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Leiden clusters (``scanpy.tl.leiden``, leidenalg flavour) of the graph of :func:`neighbor_graph`.

    Returns
    -------
    numpy.ndarray
        ``(n_cells,)`` int64 cluster ids ``0..n_clusters-1``, cluster 0 the largest.
    """
    import scanpy as sc

    if not resolution > 0:
        raise InputError(f"Leiden resolution must be positive, got {resolution}.")
    with warnings.catch_warnings():  # scanpy announces a future switch of its default flavour
        warnings.simplefilter("ignore", FutureWarning)
        sc.tl.leiden(graph, resolution=float(resolution), flavor="leidenalg", random_state=seed, key_added="_leiden")
    return graph.obs["_leiden"].astype(int).to_numpy(dtype=np.int64)


def leiden_clusters(embedding: np.ndarray, resolution: float = 1.0, n_neighbors: int = 15,
                    seed: int = 0, metric: str = "cosine") -> np.ndarray:
    """Leiden clusters of an embedding: :func:`neighbor_graph` then :func:`leiden_on_graph`.

    The same code as :func:`scconcerto.tools.leiden` (and ``scconcerto cluster``).

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    resolution
        Leiden resolution; higher gives more clusters.
    n_neighbors
        Neighbours per cell in the graph.
    seed
        Random state of the graph and of Leiden.
    metric
        Distance of the neighbour search (faiss): ``"cosine"`` or ``"euclidean"``.

    Returns
    -------
    numpy.ndarray
        ``(n_cells,)`` int64 cluster ids ``0..n_clusters-1``.
    """
    return leiden_on_graph(neighbor_graph(embedding, n_neighbors, metric, seed), resolution, seed)


def best_leiden(embedding: np.ndarray, labels: Sequence[Any] | np.ndarray,
                resolutions: Sequence[float] = DEFAULT_RESOLUTIONS, n_neighbors: int = 15,
                seed: int = 0, metric: str = "cosine") -> dict[str, Any]:
    """Leiden at several resolutions, scored by ARI and NMI against ``labels``.

    The neighbour graph is built once (:func:`neighbor_graph`); Leiden (:func:`leiden_on_graph`) is run
    once per resolution.

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
    graph = neighbor_graph(embedding, n_neighbors, metric, seed)
    codes, _ = _codes(labels, graph.n_obs, "labels")
    partitions = [leiden_on_graph(graph, r, seed) for r in res]  # loop over resolutions
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
