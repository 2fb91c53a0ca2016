"""Cell weights that balance the cell-type composition of each source, for batch-normalization statistics.

Source-specific batch normalization centres and scales each source's hidden units
by that source's own mean and variance. When sources differ in cell-type
composition (one donor rich in beta cells, another holding nearly all acinar
cells), the source mean is pulled toward its abundant types, and subtracting it
moves whole cell types: biology removed as if it were a batch effect. Taking the
statistics with per-cell weights that give every cell group the same share in
every source (importance weighting for label shift, Lipton et al., 2018) makes
a source's statistics those of one common mixture of its groups, so that only
the technical shift is removed.

The groups are the reference labels when given, otherwise clusters of the cells
found jointly across sources (:func:`balance_groups`): spherical k-means on the
cells' expression components after each source's (balanced) centre is removed,
alternated with the weights a few rounds, so that clusters follow cell types
rather than sources.

The same weights serve training (each mini-batch's statistics), AdaBN of new
sources, and the fine-tuning of query sources; a query's groups are predicted
from the reference (:mod:`scconcerto.model._query_embedding`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["WEIGHT_RANGE", "balance_groups", "balancing_weights", "source_balance_weights", "uniform_composition"]

#: Weights are clipped to this range: a group of a handful of cells must not dominate a source's statistics.
WEIGHT_RANGE = (0.05, 20.0)
#: Clusters of :func:`balance_groups` (more clusters than cell types: a cell type split in two is still balanced).
DEFAULT_CLUSTERS = 20
#: Rounds of centring each source with the current weights and re-clustering.
DEFAULT_ROUNDS = 2


def balancing_weights(groups: np.ndarray, target: np.ndarray, clip: tuple[float, float] = WEIGHT_RANGE) -> np.ndarray:
    """Per-cell weights ``target(g) / share(g)`` of cells in group ``g``, normalized to mean one.

    Parameters
    ----------
    groups
        ``(n,)`` group codes of the cells of one source (``0 .. n_groups-1``).
    target
        ``(n_groups,)`` group frequencies to reach (summing to one).
    clip
        Range of the raw ratios.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64 weights with mean one: the weighted cells have the ``target`` composition
        (up to the clipping).
    """
    groups = np.asarray(groups, dtype=np.int64)
    target = np.asarray(target, dtype=np.float64)
    if groups.size == 0:
        return np.zeros(0)
    share = np.bincount(groups, minlength=target.size) / groups.size
    w = np.clip(target[groups] / share[groups], *clip)
    return w / w.mean()


def uniform_composition(groups: np.ndarray, n_groups: int | None = None) -> np.ndarray:
    """Equal frequencies over the groups present in ``groups`` (zero for the absent ones)."""
    groups = np.asarray(groups, dtype=np.int64)
    present = np.bincount(groups, minlength=n_groups or 0) > 0
    return present / max(int(present.sum()), 1)


def source_balance_weights(groups: np.ndarray, domains: np.ndarray,
                           clip: tuple[float, float] = WEIGHT_RANGE) -> np.ndarray:
    """Per-cell weights under which every group present in a source has the same share of that source.

    Each source is weighted to the uniform composition over the groups it holds
    (:func:`balancing_weights`), so the weighted statistics of a source do not
    depend on how many cells of each group it has, only on which groups it has.
    Cells with a negative group code (unlabeled) form one more group of their source.

    Parameters
    ----------
    groups
        ``(n_cells,)`` group codes (labels or clusters; ``-1`` = none).
    domains
        ``(n_cells,)`` source codes.
    clip
        Range of the raw ratios.

    Returns
    -------
    numpy.ndarray
        ``(n_cells,)`` float32 weights, mean one within every source.
    """
    groups = np.asarray(groups, dtype=np.int64)
    domains = np.asarray(domains, dtype=np.int64)
    if groups.shape != domains.shape:
        raise ValueError(f"groups {groups.shape} and domains {domains.shape} must have one entry per cell")
    codes = np.where(groups < 0, groups.max(initial=-1) + 1, groups)
    out = np.ones(groups.size, dtype=np.float32)
    for d in np.unique(domains):
        mine = np.flatnonzero(domains == d)
        g = codes[mine]
        out[mine] = balancing_weights(g, uniform_composition(g), clip)
    return out


def _kmeans(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Spherical k-means labels of the rows of ``z`` (faiss; seeded)."""
    import faiss

    z = np.ascontiguousarray(z, dtype=np.float32)
    km = faiss.Kmeans(z.shape[1], k, niter=25, seed=int(seed) + 1, spherical=True, verbose=False,
                      max_points_per_centroid=max(256, -(-len(z) // k)),
                      min_points_per_centroid=1)  # small references: no faiss warning on standard error
    km.train(z)
    _, labels = km.index.search(z, 1)
    return labels.ravel().astype(np.int64)


def balance_groups(components: np.ndarray, domains: np.ndarray, n_clusters: int = DEFAULT_CLUSTERS,
                   rounds: int = DEFAULT_ROUNDS, seed: int = 0) -> np.ndarray:
    """Cell groups found across sources, for balancing the sources' statistics without labels.

    The cells' expression components (e.g. a truncated SVD of the normalized values,
    :func:`~scconcerto.data.positives.expression_space`) are clustered by spherical
    k-means, pooled across sources as they are; the clusters give balancing weights
    (:func:`source_balance_weights`); then, ``rounds`` times, each source is centred on its
    weighted mean and the cells are clustered again. A centring without weights would
    pull a source's abundant types onto another source's abundant types (the composition
    problem itself); the first, uncentred clustering follows the cell types where they
    differ more than the sources do, and where the sources dominate it makes clusters of
    sources, whose weights are equal (no balancing), so the centring starts unweighted.

    Parameters
    ----------
    components
        ``(n_cells, c)`` expression components.
    domains
        ``(n_cells,)`` source codes.
    n_clusters
        Clusters (at most one per cell).
    rounds
        Re-clusterings after a weighted centring of each source.
    seed
        Seed of the k-means.

    Returns
    -------
    numpy.ndarray
        ``(n_cells,)`` int64 cluster codes.
    """
    z = np.asarray(components, dtype=np.float64)
    domains = np.asarray(domains, dtype=np.int64)
    k = int(max(1, min(n_clusters, len(z))))
    if k == 1:
        return np.zeros(len(z), dtype=np.int64)
    unit = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)
    labels = _kmeans(unit, k, seed)
    for _ in range(rounds):
        weights = source_balance_weights(labels, domains).astype(np.float64)
        centred = z.copy()
        for d in np.unique(domains):
            mine = domains == d
            centred[mine] -= np.average(z[mine], axis=0, weights=weights[mine])
        centred /= np.linalg.norm(centred, axis=1, keepdims=True) + 1e-12
        labels = _kmeans(centred, k, seed)
    return labels
