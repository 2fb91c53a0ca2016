"""What the confidence models read of a cell's neighbourhood, and the small logistic model they are.

* :func:`neighbourhood_features`: how sure the posterior is (log odds of its best label) and how close the
  nearest reference cells are (best and mean cosine similarity).
* :func:`density_ratio`: log ratio of a cell's similarity to the reference and to the other query cells at
  matched sample sizes; a cell closer to its own query than to any reference cell hints at a type the
  reference lacks.
* :func:`support_log_odds`: how sure one opinion (e.g. the embedding's own vote) is of the label given.
* :func:`agreement`: the share of a cell's nearest reference cells in the expression space (not shaped by
  the labels) that carry the label it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import InputError
from ..search.neighbors import knn

__all__ = ["LogisticScore", "agreement", "density_ratio", "neighbourhood_features", "support_log_odds"]

#: Cells of each side of a density ratio (a seeded sample above it).
DENSITY_CELLS = 10_000
#: Neighbours averaged on each side of a density ratio.
DENSITY_K = 5


def neighbourhood_features(similarities: np.ndarray, posterior: np.ndarray) -> dict[str, np.ndarray]:
    """``log_odds`` of the best label, ``top_similarity`` and ``mean_similarity`` of the candidates."""
    sims = np.asarray(similarities, dtype=np.float64)
    return {"log_odds": support_log_odds(posterior, np.asarray(posterior).argmax(axis=1)),
            "top_similarity": sims[:, 0], "mean_similarity": sims.mean(axis=1)}


def support_log_odds(posterior: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Log odds of label ``chosen[i]`` under row ``i`` of ``posterior`` (clipped to ``1e-9 .. 1 - 1e-9``)."""
    p = np.clip(np.asarray(posterior)[np.arange(len(chosen)), np.asarray(chosen)], 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def agreement(labels: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Share of each row of ``labels`` (``(n, k)`` labels of a cell's expression-space neighbours; ``-1``
    unlabeled) equal to the label ``given[i]`` (0 when no neighbour is labeled)."""
    labels = np.asarray(labels)
    labeled = (labels >= 0).sum(axis=1)
    same = (labels == np.asarray(given)[:, None]).sum(axis=1)
    return np.divide(same, labeled, out=np.zeros(len(labels)), where=labeled > 0)


def _mean_top_similarity(query: np.ndarray, base: np.ndarray, k: int, own: np.ndarray | None = None) -> np.ndarray:
    """Mean cosine similarity of each query row to its ``k`` nearest ``base`` rows (``own[i]``: the row of
    ``base`` that is query row ``i`` itself, skipped; ``-1`` none)."""
    if own is not None and len(base) < 2:
        return np.where(own == 0, 0.0, np.clip(query @ base[0], 0.0, None))
    k = max(1, min(k, len(base) - (own is not None)))
    sims = knn(query, base, k, exclude_self=own is not None, self_rows=own).similarities
    return np.clip(sims, 0.0, None).mean(axis=1)


def density_ratio(query: np.ndarray, reference: np.ndarray, query_pool: np.ndarray | None = None,
                  query_rows_in_pool: np.ndarray | None = None, k: int = DENSITY_K,
                  max_cells: int = DENSITY_CELLS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log ratio of each cell's similarity to the reference and to the query, and the first of the two.

    Both sides are subsampled (seeded) to the same size ``m = min(len(reference), len(query_pool),
    max_cells)`` so the ratio does not depend on their sizes; on each side the mean similarity of the
    ``k`` nearest cells is taken (a cell is never its own neighbour).

    Parameters
    ----------
    query
        ``(n, d)`` L2-normalized cells to score.
    reference
        ``(n_ref, d)`` L2-normalized reference cells.
    query_pool
        The query cells they are compared with (default: ``query`` itself).
    query_rows_in_pool
        Row of each ``query`` cell in ``query_pool`` (``-1``: absent); default: ``query`` is the pool.
    k, max_cells, seed
        Neighbours per side, the sample cap, the seed.

    Returns
    -------
    tuple
        ``(n,)`` log ratios and ``(n,)`` mean similarities to the reference, float64.
    """
    rng = np.random.default_rng(seed)
    pool = query if query_pool is None else query_pool
    own = np.arange(len(query)) if query_pool is None else (
        np.full(len(query), -1) if query_rows_in_pool is None else np.asarray(query_rows_in_pool))
    m = int(min(len(reference), len(pool), max_cells))
    ref_rows = np.sort(rng.choice(len(reference), m, replace=False)) if len(reference) > m else np.arange(len(reference))
    pool_rows = np.sort(rng.choice(len(pool), m, replace=False)) if len(pool) > m else np.arange(len(pool))
    position = np.full(len(pool), -1)
    position[pool_rows] = np.arange(len(pool_rows))
    own_in_sample = np.where(own >= 0, position[np.maximum(own, 0)], -1)
    to_reference = _mean_top_similarity(query, reference[ref_rows], k)
    to_query = _mean_top_similarity(query, pool[pool_rows], k, own=own_in_sample)
    ratio = np.log(np.maximum(to_reference, 1e-3)) - np.log(np.maximum(to_query, 1e-3))
    return ratio, to_reference.astype(np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))``, numerically stable."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(frozen=True)
class LogisticScore:
    """``sigmoid(coef . x + intercept)`` over named features."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        missing = [f for f in self.features if f not in features]
        if missing:
            raise InputError(f"Confidence features {missing} are missing.")
        x = np.column_stack([np.asarray(features[f], dtype=np.float64) for f in self.features])
        z = x @ np.asarray(self.coef) + self.intercept
        return _sigmoid(z)

    def to_dict(self) -> dict:
        return {"features": list(self.features), "coef": list(self.coef), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> "LogisticScore":
        features = tuple(str(f) for f in d["features"])
        coef = tuple(float(c) for c in d["coef"])
        intercept = float(d["intercept"])
        if len(coef) != len(features) or not np.all(np.isfinite(coef + (intercept,))):
            raise ValueError("a logistic score needs one finite coefficient per feature")
        return cls(features, coef, intercept)

    @classmethod
    def fit(cls, features: dict[str, np.ndarray], names: tuple[str, ...], target: np.ndarray,
            weight: np.ndarray | None = None) -> "LogisticScore":
        """L2-penalized logistic regression (sklearn's ``C = 1`` objective) on standardized features, folded back
        into raw units, with **non-negative coefficients**.

        Every feature the confidence models read is oriented so that a larger value speaks for the cell (a surer
        label, closer neighbours, more agreement, a denser reference around it): a probability may only rise with
        it. Unconstrained, two correlated features can enter with opposite signs, and a cell that is *less* sure
        of its label then looks *more* likely of a seen type.
        """
        from scipy.optimize import minimize

        x = np.column_stack([np.asarray(features[f], dtype=np.float64) for f in names])
        y = np.asarray(target, dtype=np.float64)
        w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
        if not (0 < y.sum() < len(y)):
            raise InputError("A confidence model needs examples of both outcomes.")
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        z = (x - mean) / scale

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            b, c = theta[0], theta[1:]
            logit = z @ c + b
            residual = w * (_sigmoid(logit) - y)
            value = float(w @ (np.logaddexp(0.0, logit) - y * logit) + 0.5 * c @ c)
            return value, np.r_[residual.sum(), z.T @ residual + c]

        bounds = [(None, None)] + [(0.0, None)] * z.shape[1]
        theta = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B", bounds=bounds).x
        coef = theta[1:] / scale
        return cls(tuple(names), tuple(float(c) for c in coef), float(theta[0] - coef @ mean))
