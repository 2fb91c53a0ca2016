"""Missing-modality imputation: a query cell's profile is the mean of its reference neighbours' profiles."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._errors import InputError
from ..search.neighbors import NeighborsResults

__all__ = ["impute_from_neighbors", "neighbor_weights"]


def neighbor_weights(neighbors: NeighborsResults, n_reference: int, weighted: bool = False) -> sp.csr_matrix:
    """The ``(n_query, n_reference)`` averaging matrix of the neighbours (rows sum to one).

    Parameters
    ----------
    neighbors
        Query cells' neighbours among the reference cells.
    n_reference
        Number of reference cells.
    weighted
        Weight neighbours by their (non-negative) similarity instead of equally.
    """
    n, k = neighbors.indices.shape
    if k == 0:
        raise InputError("Imputation needs at least one neighbour per query cell.")
    if n and (neighbors.indices.min() < 0 or neighbors.indices.max() >= n_reference):
        raise InputError(f"Neighbour indices must lie in [0, {n_reference}) (the reference's rows).")
    if weighted:
        w = np.clip(neighbors.similarities.astype(np.float64), 0.0, None)
        total = w.sum(axis=1, keepdims=True)
        w = np.where(total > 0, w / np.where(total > 0, total, 1.0), 1.0 / k)
    else:
        w = np.full((n, k), 1.0 / k)
    return sp.csr_matrix((w.ravel(), neighbors.indices.ravel(), np.arange(0, n * k + 1, k)),
                         shape=(n, n_reference))


def impute_from_neighbors(neighbors: NeighborsResults, reference_values: np.ndarray | sp.spmatrix,
                          weighted: bool = False) -> np.ndarray:
    """Mean profile of each query cell's k nearest reference cells (paper: protein of RNA-only queries).

    A sparse averaging matrix times the reference values: no per-cell loop, no
    ``(n, k, features)`` temporary.

    Parameters
    ----------
    neighbors
        Query cells' neighbours among the reference cells.
    reference_values
        ``(n_reference, n_features)`` values to average (e.g. normalized protein levels).
    weighted
        Weight neighbours by their similarity instead of equally.

    Returns
    -------
    numpy.ndarray
        ``(n_query, n_features)`` float32.
    """
    n_ref = reference_values.shape[0]
    out = neighbor_weights(neighbors, n_ref, weighted) @ reference_values
    if sp.issparse(out):
        out = out.toarray()
    return np.asarray(out, dtype=np.float32)
