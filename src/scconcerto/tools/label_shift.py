"""Balanced AdaBN statistics for a query whose cell-type mix differs from the reference's.

Plain AdaBN normalizes an unseen query source by its own mean and variance, so a
query whose cell-type composition differs from the reference (a study rich in one
type, a depleted type) has part of its biology subtracted as if it were a batch
effect. Here the query's moments are taken with per-cell weights
``p_ref(type) / p_query(type)`` from the cells' predicted types
(:func:`balancing_weights`, :func:`weighted_moments`), so that the weighted query has
the reference's composition and only the technical shift is removed (importance
weighting for label shift, as in Lipton et al., 2018). The predictions come from
mapping with the current statistics, a couple of rounds.
"""

from __future__ import annotations

import numpy as np

__all__ = ["balancing_weights", "subsample_per_group", "weighted_moments"]

#: Weights are clipped to this range: a type predicted for a handful of query cells must not dominate.
WEIGHT_RANGE = (0.05, 20.0)



def balancing_weights(pred: np.ndarray, reference_composition: np.ndarray,
                      clip: tuple[float, float] = WEIGHT_RANGE) -> np.ndarray:
    """Per-cell weights ``p_ref(c) / p_query(c)`` of cells predicted as type ``c``, normalized to mean one.

    Parameters
    ----------
    pred
        ``(n,)`` predicted type codes of one query source (``0 .. n_types-1``).
    reference_composition
        ``(n_types,)`` type frequencies of the reference (summing to one).
    clip
        Range of the raw ratios.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64 weights with mean one.
    """
    pred = np.asarray(pred, dtype=np.int64)
    ref = np.asarray(reference_composition, dtype=np.float64)
    if pred.size == 0:
        return np.zeros(0)
    query = np.bincount(pred, minlength=ref.size) / pred.size
    w = np.clip(ref[pred] / query[pred], *clip)
    return w / w.mean()


def weighted_moments(values: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and unbiased variance of the rows of ``values`` (float64; plain moments without weights).

    The variance uses the reliability-weights correction ``1 / (1 - sum(w^2) / sum(w)^2)``, which is
    ``n / (n - 1)`` for equal weights, as batch normalization's running variance.
    """
    x = np.asarray(values, dtype=np.float64)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    total = w.sum()
    mean = w @ x / total
    biased = w @ (x - mean) ** 2 / total
    share = float((w**2).sum() / total**2)
    return mean, biased / (1.0 - share) if share < 1.0 else biased


def subsample_per_group(groups: np.ndarray, max_per_group: int, seed: int) -> np.ndarray:
    """Sorted row numbers: every row of a group with at most ``max_per_group`` rows, else a seeded sample of it."""
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    keep = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        keep.append(rows if rows.size <= max_per_group else rng.choice(rows, max_per_group, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
