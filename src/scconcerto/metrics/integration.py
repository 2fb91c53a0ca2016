"""Integration metrics on an embedding: biology conservation and batch mixing.

The definitions follow scib / scib-metrics (Luecken et al., 2022), with
neighbours found by exact cosine k-NN (:func:`scconcerto.search.neighbors.knn`,
faiss). Each cell's neighbours are the ``k`` nearest *other* cells. Every
function returns a float in which higher is better:

======================  ==========================  =====================
metric                  measures                    range / best
======================  ==========================  =====================
knn_label_accuracy      label conservation          0..1, 1
cross_batch_accuracy    labels across batches       0..1, 1
clisi                   label conservation          0..1, 1
silhouette_label        label conservation          0..1, 1
isolated_label_score    rare-label conservation     0..1, 1
graph_connectivity      label conservation          0..1, 1
batch_entropy           batch mixing                0..1, 1
ilisi                   batch mixing                0..1, 1
silhouette_batch        batch mixing                0..1, 1
kbet_acceptance         batch mixing                0..1, 1
======================  ==========================  =====================

All computations are vectorized over cells; the only Python loops run over
labels (cell types), never over cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.special import entr
from scipy.stats import chi2
from sklearn.metrics import silhouette_samples, silhouette_score

from .._errors import InputError
from .._random import sample_rows
from ..search.neighbors import NeighborsResults, knn

__all__ = [
    "knn_label_accuracy",
    "cross_batch_accuracy",
    "batch_entropy",
    "ilisi",
    "clisi",
    "silhouette_label",
    "silhouette_batch",
    "isolated_label_score",
    "graph_connectivity",
    "kbet_acceptance",
]

Labels = Sequence[Any] | np.ndarray | pd.Series | pd.Categorical


# ---------------------------------------------------------------- helpers


def _check_embedding(embedding: np.ndarray, min_rows: int = 2) -> np.ndarray:
    x = np.asarray(embedding)
    if x.ndim != 2:
        raise InputError(f"The embedding must be a 2-d (cells x dims) array, got shape {x.shape}.")
    if x.shape[0] < min_rows:
        raise InputError(f"The embedding has {x.shape[0]} cells; at least {min_rows} are needed.")
    if x.shape[1] == 0:
        raise InputError("The embedding has 0 dimensions.")
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"The embedding must be numeric, got dtype {x.dtype}.")
    if not np.isfinite(x).all():
        raise InputError("The embedding contains NaN or infinite values.")
    return x


def _codes(labels: Labels, n: int, name: str, min_categories: int = 1) -> tuple[np.ndarray, int]:
    """Integer codes ``0..n_categories-1`` of a label vector of length ``n``."""
    values = np.asarray(labels)
    if values.ndim != 1:
        raise InputError(f"{name} must be a 1-d vector, got shape {values.shape}.")
    if len(values) != n:
        raise InputError(
            f"{name} has {len(values)} entries but the embedding has {n} cells: "
            "give one entry per cell, in the same order."
        )
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    if (codes < 0).any():
        raise InputError(f"{name} contains missing values (NaN/None); drop or fill them first.")
    n_cat = len(uniques)
    if n_cat < min_categories:
        raise InputError(
            f"{name} has {n_cat} distinct value(s); this metric needs at least {min_categories}."
        )
    return codes.astype(np.int64), n_cat


def _self_knn(x: np.ndarray, k: int) -> NeighborsResults:
    """``k`` nearest other cells of each cell (cosine)."""
    n = x.shape[0]
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}.")
    if k > n - 1:
        raise InputError(f"k={k} is too large for {n} cells: use k <= {n - 1}.")
    return knn(x, x, k=int(k), exclude_self=True)


def _neighbour_counts(indices: np.ndarray, codes: np.ndarray, n_cat: int,
                      weights: np.ndarray | None = None) -> np.ndarray:
    """``(n_cells, n_cat)`` (weighted) count of each category among each cell's neighbours."""
    n = indices.shape[0]
    flat = (np.arange(n, dtype=np.int64)[:, None] * n_cat + codes[indices]).ravel()
    w = None if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    return np.bincount(flat, weights=w, minlength=n * n_cat).reshape(n, n_cat)


def _subsample(n: int, max_cells: int | None, seed: int) -> np.ndarray | None:
    """Sorted random subset of ``max_cells`` row numbers, or ``None`` to keep all."""
    if max_cells is None or n <= max_cells:
        return None
    if max_cells < 2:
        raise InputError(f"max_cells must be at least 2, got {max_cells}.")
    return sample_rows(n, max_cells, seed)


def _inverse_simpson(indices: np.ndarray, codes: np.ndarray, n_cat: int) -> np.ndarray:
    counts = _neighbour_counts(indices, codes, n_cat)
    p = counts / indices.shape[1]
    return 1.0 / np.sum(p * p, axis=1)


# ---------------------------------------------------------------- label conservation


def knn_label_accuracy(embedding: np.ndarray, labels: Labels, k: int = 5) -> float:
    """Leave-one-out k-NN classification accuracy of the labels.

    Each cell's label is predicted by a vote of its ``k`` nearest other cells,
    each vote weighted by its cosine similarity (negative similarities count
    as 0; a tiny constant breaks the tie toward the plain majority when all
    similarities are non-positive).

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    labels
        Label of each cell, ``(n_cells,)``.
    k
        Number of neighbours that vote.

    Returns
    -------
    float
        Fraction of cells whose vote returns their own label, in ``[0, 1]``.
    """
    x = _check_embedding(embedding)
    codes, n_cat = _codes(labels, x.shape[0], "labels")
    nn = _self_knn(x, k)
    w = np.maximum(nn.similarities.astype(np.float64), 0.0) + 1e-6
    votes = _neighbour_counts(nn.indices, codes, n_cat, weights=w)
    return float(np.mean(votes.argmax(axis=1) == codes))


def cross_batch_accuracy(embedding: np.ndarray, labels: Labels, batches: Labels, k: int = 5) -> float:
    """Leave-one-batch-out k-NN accuracy: each batch's labels voted by the cells of the other batches.

    For every batch, its cells' labels are predicted by a similarity-weighted vote
    (as :func:`knn_label_accuracy`) of their ``k`` nearest cells among all the
    *other* batches. Cells whose label no other batch holds cannot be right and
    are left out.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    labels
        Label of each cell, ``(n_cells,)``.
    batches
        Batch of each cell, ``(n_cells,)``; at least 2 distinct values.
    k
        Number of neighbours that vote.

    Returns
    -------
    float
        Fraction of the evaluated cells whose vote returns their own label (pooled over batches).
    """
    x = _check_embedding(embedding)
    codes, n_cat = _codes(labels, x.shape[0], "labels")
    bcodes, n_batches = _codes(batches, x.shape[0], "batches", min_categories=2)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}.")
    right, total = 0, 0
    for b in range(n_batches):
        held = bcodes == b
        others = np.flatnonzero(~held)
        seen = np.isin(codes, np.unique(codes[others])) & held
        if not seen.any():
            continue
        nn = knn(x[seen], x[others], k=int(min(k, len(others))))
        w = np.maximum(nn.similarities.astype(np.float64), 0.0) + 1e-6
        votes = _neighbour_counts(nn.indices, codes[others], n_cat, weights=w)
        right += int(np.sum(votes.argmax(axis=1) == codes[seen]))
        total += int(seen.sum())
    if total == 0:
        raise InputError("No batch shares a label with the other batches: cross-batch accuracy is undefined.")
    return right / total


def clisi(embedding: np.ndarray, labels: Labels, k: int = 90, scale: bool = True) -> float:
    """Cell-type LISI: how *un*mixed the labels are among each cell's neighbours.

    The (simplified) local inverse Simpson index of a cell is
    ``1 / sum_c p_c**2`` where ``p_c`` is the fraction of its ``k`` neighbours
    (uniform weights) with label ``c``. As in scib-metrics the median over
    cells is taken and rescaled as ``(n_labels - lisi) / (n_labels - 1)`` so
    that 1 means pure neighbourhoods.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    labels
        Cell type of each cell, ``(n_cells,)``; at least 2 distinct values.
    k
        Number of neighbours per cell.
    scale
        Rescale to ``[0, 1]`` (higher is better); if ``False`` return the raw
        median LISI, in ``[1, n_labels]``.

    Returns
    -------
    float
        Scaled cLISI.
    """
    x = _check_embedding(embedding)
    codes, n_cat = _codes(labels, x.shape[0], "labels", min_categories=2)
    lisi = float(np.median(_inverse_simpson(_self_knn(x, k).indices, codes, n_cat)))
    return (n_cat - lisi) / (n_cat - 1) if scale else lisi


def silhouette_label(embedding: np.ndarray, labels: Labels, rescale: bool = True,
                     max_cells: int | None = 10_000, seed: int = 0) -> float:
    """Average silhouette width of the labels (scib ``silhouette_label``).

    Euclidean distances, as in scib. Rescaled as ``(asw + 1) / 2`` so 1 means
    compact, well separated labels and about 0.5 means random labels.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    labels
        Cell type of each cell, ``(n_cells,)``.
    rescale
        Map the silhouette from ``[-1, 1]`` to ``[0, 1]``.
    max_cells
        Score a random subset of at most this many cells (silhouette costs
        ``O(n**2)``); ``None`` scores all cells.
    seed
        Seed of the subsampling.

    Returns
    -------
    float
        (Rescaled) average silhouette width.
    """
    x = _check_embedding(embedding)
    codes, _ = _codes(labels, x.shape[0], "labels")
    sub = _subsample(x.shape[0], max_cells, seed)
    if sub is not None:
        x, codes = x[sub], codes[sub]
    n_present = len(np.unique(codes))
    if not 2 <= n_present <= x.shape[0] - 1:
        raise InputError(
            f"The silhouette needs between 2 and n_cells - 1 distinct labels; got {n_present} "
            f"among {x.shape[0]} (scored) cells."
        )
    asw = float(silhouette_score(x, codes, metric="euclidean"))
    return (asw + 1.0) / 2.0 if rescale else asw


def isolated_label_score(embedding: np.ndarray, labels: Labels, batches: Labels,
                         rescale: bool = True, iso_threshold: int | None = None,
                         max_cells: int | None = 10_000, seed: int = 0) -> float:
    """Silhouette-based isolated-label score (scib-metrics ``isolated_labels``).

    Isolated labels are those present in the fewest batches (or in at most
    ``iso_threshold`` batches). The score is the mean, over isolated labels,
    of the average (rescaled) silhouette of their cells, computed with all
    labels.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    labels
        Cell type of each cell, ``(n_cells,)``; at least 2 distinct values.
    batches
        Batch of each cell, ``(n_cells,)``.
    rescale
        Map silhouettes from ``[-1, 1]`` to ``[0, 1]``.
    iso_threshold
        Labels found in at most this many batches are isolated; by default the
        smallest number of batches any label is found in.
    max_cells
        Score a random subset of at most this many cells; ``None`` for all.
    seed
        Seed of the subsampling.

    Returns
    -------
    float
        Mean isolated-label silhouette; NaN if no isolated label survives the
        subsampling.
    """
    x = _check_embedding(embedding)
    codes, n_cat = _codes(labels, x.shape[0], "labels", min_categories=2)
    bcodes, n_b = _codes(batches, x.shape[0], "batches")
    present = np.zeros((n_cat, n_b), dtype=bool)
    present[codes, bcodes] = True
    batches_per_label = present.sum(axis=1)
    threshold = batches_per_label.min() if iso_threshold is None else iso_threshold
    isolated = np.flatnonzero(batches_per_label <= threshold)
    sub = _subsample(x.shape[0], max_cells, seed)
    if sub is not None:
        x, codes = x[sub], codes[sub]
    if not 2 <= len(np.unique(codes)) <= x.shape[0] - 1:
        raise InputError("The silhouette needs between 2 and n_cells - 1 distinct labels.")
    sil = silhouette_samples(x, codes, metric="euclidean")
    if rescale:
        sil = (sil + 1.0) / 2.0
    sums = np.bincount(codes, weights=sil, minlength=n_cat)
    sizes = np.bincount(codes, minlength=n_cat)
    isolated = isolated[sizes[isolated] > 0]
    if len(isolated) == 0:
        return float("nan")
    return float(np.mean(sums[isolated] / sizes[isolated]))


def graph_connectivity(embedding: np.ndarray, labels: Labels, k: int = 15) -> float:
    """Connectivity of each label's cells in the k-NN graph (scib).

    For each label, the subgraph of the (undirected) k-NN graph induced by its
    cells is split into connected components; the score of the label is the
    fraction of its cells in the largest component. The mean over labels is
    returned. Edges are taken as undirected (weak connectivity), as with the
    symmetric neighbour graph of scanpy that scib uses.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    labels
        Cell type of each cell, ``(n_cells,)``.
    k
        Number of neighbours per cell in the graph.

    Returns
    -------
    float
        Mean largest-component fraction, in ``(0, 1]``.
    """
    x = _check_embedding(embedding)
    codes, n_cat = _codes(labels, x.shape[0], "labels")
    nn = _self_knn(x, k)
    n = x.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), nn.indices.shape[1])
    graph = sparse.csr_matrix(
        (np.ones(rows.size, dtype=np.int8), (rows, nn.indices.ravel())), shape=(n, n)
    )
    scores = np.empty(n_cat)
    for c in range(n_cat):  # loop over labels, not cells
        members = np.flatnonzero(codes == c)
        sub = graph[members][:, members]
        _, comp = connected_components(sub, directed=True, connection="weak")
        scores[c] = np.bincount(comp).max() / len(members)
    return float(scores.mean())


# ---------------------------------------------------------------- batch mixing


def batch_entropy(embedding: np.ndarray, batches: Labels, k: int = 50) -> float:
    """Mean normalized entropy of the batch labels among each cell's neighbours.

    For each cell, ``H = -sum_b p_b log p_b / log(n_batches)`` with ``p_b``
    the fraction of its ``k`` neighbours from batch ``b``; 1 means the batches
    are evenly mixed in every neighbourhood, 0 that no cell has a neighbour
    from another batch.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    batches
        Batch of each cell, ``(n_cells,)``; at least 2 distinct values.
    k
        Number of neighbours per cell.

    Returns
    -------
    float
        Mean normalized entropy in ``[0, 1]``.
    """
    x = _check_embedding(embedding)
    codes, n_b = _codes(batches, x.shape[0], "batches", min_categories=2)
    nn = _self_knn(x, k)
    p = _neighbour_counts(nn.indices, codes, n_b) / nn.indices.shape[1]
    h = entr(p).sum(axis=1) / np.log(n_b)
    return float(h.mean())


def ilisi(embedding: np.ndarray, batches: Labels, k: int = 90, scale: bool = True) -> float:
    """Integration LISI: effective number of batches among each cell's neighbours.

    The (simplified) local inverse Simpson index of a cell is
    ``1 / sum_b p_b**2`` where ``p_b`` is the fraction of its ``k``
    neighbours (uniform weights) from batch ``b``. As in scib-metrics the
    median over cells is rescaled as ``(lisi - 1) / (n_batches - 1)`` so that
    1 means perfect mixing and 0 none.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    batches
        Batch of each cell, ``(n_cells,)``; at least 2 distinct values.
    k
        Number of neighbours per cell.
    scale
        Rescale to ``[0, 1]``; if ``False`` return the raw median LISI, in
        ``[1, n_batches]``.

    Returns
    -------
    float
        Scaled iLISI.
    """
    x = _check_embedding(embedding)
    codes, n_b = _codes(batches, x.shape[0], "batches", min_categories=2)
    lisi = float(np.median(_inverse_simpson(_self_knn(x, k).indices, codes, n_b)))
    return (lisi - 1.0) / (n_b - 1) if scale else lisi


def silhouette_batch(embedding: np.ndarray, labels: Labels, batches: Labels,
                     rescale: bool = True, max_cells: int | None = 10_000,
                     seed: int = 0) -> float:
    """Batch silhouette within cell types (scib ``silhouette_batch``).

    Within each cell type, the silhouette of the *batch* labels is computed
    per cell (Euclidean); its absolute value measures batch separation and
    ``1 - |s|`` mixing. The per-cell scores are averaged per cell type and
    the cell-type means averaged. Cell types found in a single batch (or with
    one cell per batch) are skipped, as in scib.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    labels
        Cell type of each cell, ``(n_cells,)``.
    batches
        Batch of each cell, ``(n_cells,)``; at least 2 distinct values.
    rescale
        Return ``1 - |s|`` (higher is better); if ``False`` return the mean
        ``|s|``.
    max_cells
        Score a random subset of at most this many cells; ``None`` for all.
    seed
        Seed of the subsampling.

    Returns
    -------
    float
        Batch ASW in ``[0, 1]``; NaN if no cell type spans two batches.
    """
    x = _check_embedding(embedding)
    codes, n_cat = _codes(labels, x.shape[0], "labels")
    bcodes, _ = _codes(batches, x.shape[0], "batches", min_categories=2)
    sub = _subsample(x.shape[0], max_cells, seed)
    if sub is not None:
        x, codes, bcodes = x[sub], codes[sub], bcodes[sub]
    means = []
    for c in range(n_cat):  # loop over cell types, not cells
        members = np.flatnonzero(codes == c)
        b = bcodes[members]
        n_b = len(np.unique(b))
        if n_b == 1 or n_b == len(members):
            continue
        s = np.abs(silhouette_samples(x[members], b, metric="euclidean"))
        means.append(float(np.mean(1.0 - s if rescale else s)))
    return float(np.mean(means)) if means else float("nan")


def kbet_acceptance(embedding: np.ndarray, batches: Labels, k: int = 50,
                    alpha: float = 0.05) -> float:
    """kBET acceptance rate (Büttner et al., 2019), without per-type splitting.

    For each cell, Pearson's chi-square statistic compares the batch counts
    among its ``k`` neighbours with ``k`` times the global batch proportions
    (``n_batches - 1`` degrees of freedom). The cell is *accepted* (well
    mixed) if the p-value is at least ``alpha``. With perfect mixing the rate
    is about ``1 - alpha``; with separated batches it is 0.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` embedding.
    batches
        Batch of each cell, ``(n_cells,)``; at least 2 distinct values.
    k
        Neighbourhood size.
    alpha
        Significance level of each test, in ``(0, 1)``.

    Returns
    -------
    float
        Fraction of accepted cells, in ``[0, 1]``.
    """
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha}.")
    x = _check_embedding(embedding)
    codes, n_b = _codes(batches, x.shape[0], "batches", min_categories=2)
    nn = _self_knn(x, k)
    k_eff = nn.indices.shape[1]
    observed = _neighbour_counts(nn.indices, codes, n_b)
    expected = k_eff * np.bincount(codes, minlength=n_b) / len(codes)
    stat = np.sum((observed - expected) ** 2 / expected, axis=1)
    pvals = chi2.sf(stat, df=n_b - 1)
    return float(np.mean(pvals >= alpha))
