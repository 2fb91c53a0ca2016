"""Calibration of classifier confidences and rejection of unknown cells.

Temperature scaling (Guo et al., 2017) fits one scalar ``T`` on held-out
labeled cells so that ``softmax(logits / T)`` is calibrated; the expected
calibration error (ECE) measures it. A cell is *unknown* (none of the
training types) when a score falls below a threshold chosen on held-out
labeled cells (a target rate of wrongly rejected seen cells). Scores: the
calibrated top probability, the feature similarity to the nearest training
cells (Sun et al., 2022), or both through their empirical CDFs on held-out cells.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp, softmax

from .._errors import InputError

__all__ = ["energy_confidence", "expected_calibration_error", "feature_knn_similarity", "fit_temperature",
           "empirical_cdf", "max_softmax", "probability_to_log_odds", "rejection_threshold", "scaled_probabilities",
           "score_quantiles", "top_class_log_odds", "unknown_auroc"]

# A perfectly separated validation set drives the NLL-optimal temperature to 0; the lower bound keeps
# the calibrated probabilities from becoming arbitrarily sharp on shifted data.
_T_BOUNDS = (0.1, 20.0)


def _check_logits(logits: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise InputError(f"logits must be a (cells, classes) matrix, got shape {z.shape}.")
    if labels is None:
        return z, None
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (z.shape[0],):
        raise InputError(f"labels must hold one class code per row of the logits ({z.shape[0]}), got {y.shape}.")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise InputError(f"label codes must lie in [0, {z.shape[1]}), got [{y.min()}, {y.max()}].")
    return z, y


def scaled_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` per row (float32; rows sum to one)."""
    z, _ = _check_logits(logits)
    return softmax(z / temperature, axis=1).astype(np.float32)


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated confidence: the largest class probability of ``softmax(logits / T)`` (in ``[1/C, 1]``)."""
    return scaled_probabilities(logits, temperature).max(axis=1)


def top_class_log_odds(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``log(p / (1 - p))`` of the top class of ``softmax(logits / T)``, computed without rounding to 1.

    It ranks cells exactly as the top probability ``p`` does (``p = sigmoid(log odds)``),
    but stays resolvable when ``p`` rounds to 1 in floating point, so thresholds and
    AUROC do not suffer from ties among confident cells. float64; ``+inf`` with a single class.
    """
    z, _ = _check_logits(logits)
    z = z / temperature
    best = z.argmax(axis=1)
    top = z[np.arange(z.shape[0]), best]
    rest = z.copy()
    rest[np.arange(z.shape[0]), best] = -np.inf
    return top - logsumexp(rest, axis=1)


def probability_to_log_odds(p: float) -> float:
    """``log(p / (1 - p))`` (``-inf`` for 0, ``+inf`` for 1)."""
    with np.errstate(divide="ignore"):
        return float(np.log(p) - np.log1p(-p))


def energy_confidence(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(logits / T)`` (Liu et al., 2020): higher means more familiar.

    An alternative score for unseen-type detection; not bounded to ``[0, 1]``.
    """
    z, _ = _check_logits(logits)
    return (temperature * logsumexp(z / temperature, axis=1)).astype(np.float32)


def feature_knn_similarity(features: np.ndarray, bank: np.ndarray, k: int = 10) -> np.ndarray:
    """Cosine similarity of each row of ``features`` to its ``k``-th nearest row of ``bank`` (Sun et al., 2022).

    ``bank`` holds the features of training cells; a cell unlike every
    training cell (an unseen type) has a low similarity even where the softmax
    is confident. Exact search (faiss). float32, in ``[-1, 1]``.
    """
    from ..search.neighbors import knn

    bank = np.asarray(bank, dtype=np.float32)
    if bank.ndim != 2 or bank.shape[0] == 0:
        raise InputError("The feature bank is empty: there are no training cells to compare with.")
    sims = knn(np.asarray(features, dtype=np.float32), bank, k=min(k, bank.shape[0])).similarities
    return sims[:, -1].astype(np.float32)


def score_quantiles(values: np.ndarray, n: int = 501) -> np.ndarray:
    """``n`` evenly spaced quantiles (0 to 1) of ``values``: a compact record of their distribution."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise InputError("No values to summarise.")
    return np.quantile(v, np.linspace(0.0, 1.0, n))


def empirical_cdf(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Fraction of the reference distribution (given by :func:`score_quantiles`) below each value.

    0 below the smallest reference value, 1 above the largest, linear in between.
    Scores of different scales become comparable: a low value means atypical
    for held-out cells of seen types.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    return np.interp(np.asarray(values, dtype=np.float64), q, np.linspace(0.0, 1.0, q.size), left=0.0, right=1.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = _T_BOUNDS) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``labels`` under ``softmax(logits / T)``.

    A one-dimensional bounded search over ``log T`` (scipy); the NLL is convex in ``1/T``.
    """
    z, y = _check_logits(logits, labels)
    if z.shape[0] == 0:
        raise InputError("No held-out cells to calibrate on: keep a validation fraction above zero.")
    rows = np.arange(z.shape[0])

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence (equal-width bins over ``[0, 1]``).

    ``ECE = sum_b (n_b / n) |accuracy_b - mean confidence_b|``, where a cell
    falls in bin ``b`` by its largest class probability.
    """
    p, y = _check_logits(probabilities, labels)
    if p.shape[0] == 0:
        raise InputError("No cells to measure the calibration error on.")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=correct, minlength=n_bins) - np.bincount(bins, weights=conf, minlength=n_bins)
    return float(np.abs(gap).sum() / count.sum())


def rejection_threshold(held_out_confidence: np.ndarray, false_rejection_rate: float = 0.05) -> float:
    """The confidence below which a cell is called unknown.

    Chosen so that a fraction ``false_rejection_rate`` of held-out cells of
    *seen* types fall below it (the empirical quantile).
    """
    c = np.asarray(held_out_confidence, dtype=np.float64).ravel()
    if c.size == 0:
        raise InputError("No held-out cells to choose the unknown threshold on.")
    if not 0.0 <= false_rejection_rate < 1.0:
        raise InputError(f"false_rejection_rate must lie in [0, 1), got {false_rejection_rate}.")
    return float(np.quantile(c, false_rejection_rate))


def unknown_auroc(confidence: np.ndarray, is_unseen: np.ndarray) -> float:
    """AUROC of low confidence as a detector of unseen-type cells (1: perfect separation, 0.5: chance)."""
    from sklearn.metrics import roc_auc_score

    c = np.asarray(confidence, dtype=np.float64).ravel()
    u = np.asarray(is_unseen, dtype=bool).ravel()
    if c.shape != u.shape:
        raise InputError(f"confidence and is_unseen must have the same length ({c.size} vs {u.size}).")
    if u.all() or not u.any():
        raise InputError("AUROC needs both seen and unseen cells.")
    return float(roc_auc_score(u, -c))
