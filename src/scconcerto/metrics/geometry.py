"""Geometry of contrastive embeddings: alignment and uniformity.

Wang & Isola (2020), "Understanding Contrastive Representation Learning
through Alignment and Uniformity on the Hypersphere". Both are computed on
L2-normalized rows ``f(x)`` and both are *lower is better*:

* alignment ``E ||f(x) - f(x+)||^2`` over positive pairs (two views of a cell),
  in ``[0, 4]``;
* uniformity ``log E exp(-t ||f(x) - f(y)||^2)`` over distinct pairs, in
  ``[-4t, 0]``: 0 for a point mass, more negative when spread on the sphere.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist
from scipy.special import logsumexp

from .._errors import InputError
from .._random import sample_rows
from ..search.neighbors import l2_normalize

__all__ = ["alignment", "uniformity"]


def _check_matrix(z: np.ndarray, name: str, min_rows: int = 1) -> np.ndarray:
    x = np.asarray(z)
    if x.ndim != 2:
        raise InputError(f"{name} must be a 2-d (cells x dims) array, got shape {x.shape}.")
    if x.shape[0] < min_rows or x.shape[1] == 0:
        raise InputError(f"{name} has shape {x.shape}; at least {min_rows} row(s) and 1 column are needed.")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise InputError(f"{name} must hold finite numbers only.")
    return x


def alignment(z1: np.ndarray, z2: np.ndarray, alpha: float = 2.0) -> float:
    """Mean distance between the normalized embeddings of positive pairs.

    Row ``i`` of ``z1`` and row ``i`` of ``z2`` are two views of the same
    cell. Computes ``mean_i ||f(z1_i) - f(z2_i)||^alpha`` with ``f`` the row
    L2 normalization.

    Parameters
    ----------
    z1, z2
        ``(n_cells, n_dims)`` embeddings of the two views.
    alpha
        Exponent of the distance (2 in the paper).

    Returns
    -------
    float
        Alignment loss; 0 when the two views coincide (lower is better).
    """
    a = _check_matrix(z1, "z1")
    b = _check_matrix(z2, "z2")
    if a.shape != b.shape:
        raise InputError(f"z1 and z2 must have the same shape, got {a.shape} and {b.shape}.")
    if alpha <= 0:
        raise InputError(f"alpha must be positive, got {alpha}.")
    diff = l2_normalize(a).astype(np.float64) - l2_normalize(b).astype(np.float64)
    dist = np.linalg.norm(diff, axis=1)
    return float(np.mean(dist**alpha))


def uniformity(z: np.ndarray, t: float = 2.0, max_cells: int | None = 5_000,
               seed: int = 0) -> float:
    """Log of the mean Gaussian potential between normalized embeddings.

    Computes ``log mean_{i<j} exp(-t ||f(z_i) - f(z_j)||^2)`` over all
    distinct pairs of (at most ``max_cells`` randomly chosen) rows, in a
    numerically stable way (log-sum-exp).

    Parameters
    ----------
    z
        ``(n_cells, n_dims)`` embedding; at least 2 rows.
    t
        Temperature of the Gaussian potential (2 in the paper).
    max_cells
        Use a random subset of at most this many rows (the cost is quadratic);
        ``None`` uses all rows.
    seed
        Seed of the subsampling.

    Returns
    -------
    float
        Uniformity loss in ``[-4t, 0]``; 0 for a point mass, lower is more
        uniform.
    """
    x = _check_matrix(z, "z", min_rows=2)
    if t <= 0:
        raise InputError(f"t must be positive, got {t}.")
    if max_cells is not None:
        if max_cells < 2:
            raise InputError(f"max_cells must be at least 2, got {max_cells}.")
        x = x[sample_rows(x.shape[0], max_cells, seed)]
    f = l2_normalize(x).astype(np.float64)
    sq = pdist(f, metric="sqeuclidean")
    return float(logsumexp(-t * sq) - np.log(sq.size))
