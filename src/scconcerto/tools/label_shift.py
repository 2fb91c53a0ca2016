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

from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.composition import WEIGHT_RANGE, balancing_weights, source_balance_weights
from .label_transfer import label_counts

__all__ = ["WEIGHT_RANGE", "balancing_weights", "query_balance_weights", "set_balanced_moments",
           "subsample_per_group", "weighted_moments"]


def weighted_moments(values: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and unbiased variance of the rows of ``values`` (float64; plain moments without weights).

    The batch-normalization layer's own weighted moments
    (:func:`scconcerto.nn.dsbn.weighted_moments`): the variance uses the reliability-weights correction
    ``1 / (1 - sum(w^2) / sum(w)^2)``, which is ``n / (n - 1)`` for equal weights, as batch normalization's
    running variance.
    """
    import torch

    from ..nn.dsbn import weighted_moments as moments

    x = torch.from_numpy(np.asarray(values, dtype=np.float64))
    w = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float64))
    mean, var, factor = moments(x, w)
    return mean.numpy(), (var * factor).numpy()


def subsample_per_group(groups: np.ndarray, max_per_group: int, seed: int) -> np.ndarray:
    """Sorted row numbers: every row of a group with at most ``max_per_group`` rows, else a seeded sample of it."""
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    keep = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        keep.append(rows if rows.size <= max_per_group else rng.choice(rows, max_per_group, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def set_balanced_moments(norm: Any, hidden: np.ndarray, domains: np.ndarray, new_domains: list[int],
                         known: list[int], reweight: Callable[[], np.ndarray], rounds: int) -> np.ndarray | None:
    """Set the statistics of the unseen sources ``new_domains`` of a domain-specific batch norm ``norm`` (in
    place) to the moments of their ``hidden`` vectors (rows of source ``domains``), reweighted by their
    predicted composition.

    First the plain moments (AdaBN); then, ``rounds`` times, the moments under the per-row weights returned by
    ``reweight()``, which predicts the rows' groups under the current statistics. A source with fewer than
    ``MIN_ADAPT_CELLS`` rows gets the mean statistics of the ``known`` sources, as in AdaBN. Returns the
    last weights (``None`` without rounds).
    """
    import torch

    from ..nn.dsbn import MIN_ADAPT_CELLS

    weights = None
    for round_ in range(rounds + 1):
        for d in new_domains:
            mine = domains == d
            if mine.sum() < MIN_ADAPT_CELLS:  # no statistics of its own
                norm.use_mean_statistics(d, known)
                continue
            norm.set_moments(d, torch.from_numpy(hidden[mine]),
                             None if weights is None else torch.from_numpy(weights[mine]))
        if round_ == rounds:
            break
        weights = reweight()
    return weights


def query_balance_weights(pred: np.ndarray, domains: np.ndarray, spec: tuple[np.ndarray, int, str]) -> np.ndarray:
    """Balancing weights of query cells from their predicted groups ``pred``, per source ``domains``.

    ``spec`` is ``(reference group codes, number of groups, target)``: with target ``"equal"`` each source's
    groups get equal shares (as the reference sources' balanced statistics); otherwise each source is weighted
    to the reference's composition of the groups.
    """
    codes, n_groups, target = spec
    if target == "equal":
        return source_balance_weights(pred, domains)
    counts = label_counts(codes, n_groups)
    composition = counts / max(int(counts.sum()), 1)
    weights = np.ones(len(pred))
    for d in np.unique(domains):
        mine = domains == d
        weights[mine] = balancing_weights(pred[mine], composition)
    return weights
