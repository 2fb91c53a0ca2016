"""Leiden clustering of an embedding's kNN graph (scanpy + leidenalg), with a resolution sweep.

The neighbour graph is built once (:func:`~scconcerto.metrics.clustering.neighbor_graph`:
``scanpy.pp.neighbors`` on the embedding, cosine distance since Concerto embeddings lie on
the unit sphere, neighbours searched by faiss); Leiden
(:func:`~scconcerto.metrics.clustering.leiden_on_graph`, leidenalg flavour) then runs once
per resolution. They are the package's one Leiden, which :func:`scconcerto.metrics.best_leiden`
also runs. The sweep scores each resolution by the silhouette of its clusters in the
embedding (:func:`scconcerto.metrics.silhouette_label`, raw scale ``[-1, 1]``,
on a seeded subsample of at most ``max_cells`` cells), so a resolution can be
chosen without labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from .._copy import with_copy
from .._errors import InputError
from ..metrics import ari, nmi, silhouette_label
from ..metrics.clustering import leiden_on_graph, neighbor_graph

__all__ = ["LeidenSweep", "cluster", "leiden", "leiden_sweep", "neighbor_graph", "DEFAULT_SWEEP"]

#: Resolutions of :func:`leiden_sweep` when none are given.
DEFAULT_SWEEP: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0)


def leiden(embedding: np.ndarray, resolution: float = 1.0, n_neighbors: int = 15, metric: str = "cosine",
           seed: int = 0) -> np.ndarray:
    """Leiden clusters of the kNN graph of an embedding.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    resolution
        Leiden resolution; higher gives more, smaller clusters.
    n_neighbors, metric
        The kNN graph (see :func:`neighbor_graph`).
    seed
        Random state of the graph and of Leiden (same seed, same clusters).

    Returns
    -------
    numpy.ndarray
        ``(n_cells,)`` int64 cluster ids ``0..n_clusters-1``, cluster 0 the largest.
    """
    return leiden_on_graph(neighbor_graph(embedding, n_neighbors, metric, seed), resolution, seed)


@dataclass(frozen=True)
class LeidenSweep:
    """Leiden at several resolutions on one graph.

    Attributes
    ----------
    table
        One row per resolution (index ``resolution``): ``n_clusters`` and ``silhouette``
        (NaN when there is a single cluster); with labels also ``ari`` and ``nmi``.
    clusters
        ``{resolution: (n_cells,) int64 cluster ids}``.
    best_resolution
        The resolution of the highest silhouette (the first on ties; the first
        resolution when every silhouette is NaN).
    """

    table: pd.DataFrame
    clusters: dict[float, np.ndarray]
    best_resolution: float


def _silhouette(x: np.ndarray, clusters: np.ndarray, max_cells: int | None, seed: int) -> float:
    if not 2 <= len(np.unique(clusters)) <= x.shape[0] - 1:
        return float("nan")
    try:
        return silhouette_label(x, clusters, rescale=False, max_cells=max_cells, seed=seed)
    except InputError:  # the subsample may hold a single cluster
        return float("nan")


def leiden_sweep(embedding: np.ndarray, resolutions: Sequence[float] = DEFAULT_SWEEP, labels: Sequence | None = None,
                 n_neighbors: int = 15, metric: str = "cosine", max_cells: int | None = 10_000,
                 seed: int = 0) -> LeidenSweep:
    """Leiden at each resolution on one kNN graph, each scored by its silhouette (and ARI/NMI with labels).

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    resolutions
        Leiden resolutions to try.
    labels
        Optional known cell types, ``(n_cells,)``: adds ``ari`` and ``nmi`` columns.
    n_neighbors, metric
        The kNN graph (see :func:`neighbor_graph`).
    max_cells
        Silhouettes are computed on a seeded subsample of at most this many cells
        (they cost ``O(n**2)``); ``None`` uses all cells.
    seed
        Random state of graph, Leiden and subsample.

    Returns
    -------
    LeidenSweep
    """
    res = [float(r) for r in resolutions]
    if not res:
        raise InputError("resolutions is empty: give at least one Leiden resolution.")
    if any(not r > 0 for r in res):
        raise InputError(f"Leiden resolutions must be positive, got {res}.")
    if len(set(res)) != len(res):
        raise InputError(f"resolutions has repeated values: {res}.")
    x = np.asarray(embedding)
    graph = neighbor_graph(x, n_neighbors, metric, seed)
    clusters = {r: leiden_on_graph(graph, r, seed) for r in res}  # loop over resolutions, not cells
    table = pd.DataFrame({"n_clusters": [int(c.max()) + 1 for c in clusters.values()],
                          "silhouette": [_silhouette(x, c, max_cells, seed) for c in clusters.values()]},
                         index=pd.Index(res, name="resolution"))
    if labels is not None:
        if len(labels) != x.shape[0]:
            raise InputError(f"labels has {len(labels)} entries for {x.shape[0]} cells.")
        table["ari"] = [ari(labels, c) for c in clusters.values()]
        table["nmi"] = [nmi(labels, c) for c in clusters.values()]
    sil = table["silhouette"].to_numpy(dtype=float)
    best = res[int(np.nanargmax(sil))] if np.isfinite(sil).any() else res[0]
    return LeidenSweep(table=table, clusters=clusters, best_resolution=best)


@with_copy()
def cluster(adata: ad.AnnData, resolution: float | None = 1.0, use_rep: str = "X_concerto",
            sweep: Sequence[float] | None = None, n_neighbors: int = 15, metric: str = "cosine",
            key_added: str = "leiden", max_cells: int | None = 10_000, seed: int = 0) -> LeidenSweep | None:
    """Leiden clusters of ``adata.obsm[use_rep]`` written to ``adata.obs[key_added]`` (categorical).

    Parameters
    ----------
    adata
        Cells with an embedding in ``obsm[use_rep]``; changed in place.
    resolution
        Leiden resolution. With ``sweep``, ``None`` keeps the clusters of the best-silhouette resolution.
    use_rep
        ``obsm`` key of the embedding.
    sweep
        Resolutions to try; the table is stored in ``uns[key_added + '_sweep']`` and each resolution's
        clusters in ``obs['<key_added>_<resolution>']``.
    n_neighbors, metric, max_cells, seed
        See :func:`leiden_sweep`.
    copy
        Cluster a copy of ``adata`` and return it (keyword only; ``adata`` is untouched).

    Returns
    -------
    LeidenSweep, AnnData or None
        The sweep, when one was asked for; with ``copy=True``, the clustered copy.
    """
    if use_rep not in adata.obsm:
        raise InputError(f"`obsm[{use_rep!r}]` is not in the AnnData (keys: {list(adata.obsm)}). Embed the cells "
                         "first (`scconcerto embed`), or name the embedding with use_rep.")
    if sweep is None and resolution is None:
        raise InputError("Give a resolution, or a sweep of resolutions to choose from.")
    x = np.asarray(adata.obsm[use_rep])
    result = None
    if sweep is not None:
        res = [float(r) for r in sweep]
        if resolution is not None and float(resolution) not in res:
            res.append(float(resolution))
        result = leiden_sweep(x, res, n_neighbors=n_neighbors, metric=metric, max_cells=max_cells, seed=seed)
        chosen = result.best_resolution if resolution is None else float(resolution)
        codes = result.clusters[chosen]
        for r, c in result.clusters.items():
            adata.obs[f"{key_added}_{r:g}"] = pd.Categorical(c.astype(str), categories=[str(i) for i in range(c.max() + 1)])
        table = result.table.reset_index()
        adata.uns[f"{key_added}_sweep"] = {col: table[col].to_numpy() for col in table.columns}
    else:
        chosen = float(resolution)
        codes = leiden(x, chosen, n_neighbors, metric, seed)
    adata.obs[key_added] = pd.Categorical(codes.astype(str), categories=[str(i) for i in range(codes.max() + 1)])
    adata.uns[key_added] = {"resolution": chosen, "n_neighbors": int(n_neighbors), "metric": metric,
                            "use_rep": use_rep, "seed": int(seed)}
    return result
