"""The label posterior of a query cell: the similarity-weighted vote of its ``k`` nearest reference cells,
calibrated.

For a cell whose ``k`` nearest reference cells have cosine similarities ``s_j`` and labels ``y_j``::

    p(c | x) = (sum_j max(s_j, 0) [y_j = c] + alpha * prior_c) ** gamma / normalizer

The most probable label is the plain similarity-weighted vote's (``k = 5`` by default, as in the paper),
with the reference's label frequencies ``prior`` breaking only ties. ``alpha`` (how much those frequencies
count where the vote is thin) and ``gamma`` (how sure a given share of the vote makes: neighbours are not
independent witnesses) are fitted on held-out reference cells by maximum likelihood
(:meth:`VotePosterior.fit`), so the probability is calibrated there: a label given 0.8 is right about
80 % of the time. Unlabeled reference cells (code ``-1``) take a neighbour's place but vote for nothing.

Two such votes, in the embedding and in the reference's scaled expression space, are pooled into one
posterior (:func:`pool_posteriors`): their product, as two independent opinions, raised to a power ``tau``
fitted on the same held-out cells (:func:`fit_pool_power`), since the two are not independent.

A query whose label proportions differ from the reference's can have the posterior's prior moved to its
own proportions, estimated by EM (Saerens et al., 2002) with the reference's proportions as a Dirichlet
prior (:func:`adjust_to_query_proportions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import logsumexp

from .._errors import InputError

__all__ = ["VotePosterior", "adjust_to_query_proportions", "class_votes", "fit_pool_power", "label_frequencies",
           "platt_smoothing", "pool_posteriors", "smoothed_targets"]

#: Search ranges of the fitted parameters (``alpha`` in votes, ``gamma`` a power).
ALPHA_RANGE = (1e-3, 10.0)
GAMMA_RANGE = (0.25, 16.0)
#: Search range of the pooled posterior's power.
TAU_RANGE = (0.05, 4.0)


def label_frequencies(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of each label among the labeled cells (``-1`` not counted), float64; uniform without labels."""
    codes = np.asarray(codes)
    counts = np.bincount(codes[codes >= 0], minlength=n_classes)[:n_classes].astype(np.float64)
    return counts / counts.sum() if counts.sum() > 0 else np.full(n_classes, 1.0 / n_classes)


def class_votes(similarities: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n, n_classes)`` similarity-weighted votes of each cell's neighbours.

    ``similarities`` and ``labels`` are ``(n, k)``; negative similarities count as zero and label ``-1``
    (unlabeled) votes for nothing.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    weights = np.clip(np.asarray(similarities, dtype=np.float64), 0.0, None)
    ok = labels >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], labels.shape)
    return sp.coo_matrix((weights[ok], (rows[ok], labels[ok])), shape=(n, n_classes)).toarray()


def _normalized(evidence: np.ndarray, gamma: float) -> np.ndarray:
    """Rows of ``evidence ** gamma`` scaled to sum to one (in logs: no overflow for large ``gamma``)."""
    log_e = gamma * np.log(evidence)
    return np.exp(log_e - logsumexp(log_e, axis=1, keepdims=True))


@dataclass(frozen=True)
class VotePosterior:
    """Calibrated similarity-weighted vote of a cell's ``k`` nearest reference cells (see the module docstring).

    Attributes
    ----------
    alpha
        Weight of the reference's label frequencies.
    gamma
        Power of the smoothed vote (its calibration).
    prior
        ``(n_classes,)`` label frequencies of the reference.
    k
        Neighbours that vote.
    """

    alpha: float
    gamma: float
    prior: np.ndarray
    k: int

    @property
    def n_classes(self) -> int:
        return int(len(self.prior))

    def posterior(self, similarities: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` float64 posterior from each cell's neighbours (``(n, >= k)``, best first)."""
        votes = class_votes(similarities[:, :self.k], labels[:, :self.k], self.n_classes)
        return _normalized(votes + self.alpha * self.prior[None, :], self.gamma)

    @classmethod
    def fit(cls, similarities: np.ndarray, labels: np.ndarray, truth: np.ndarray, prior: np.ndarray,
            k: int, smoothing: float = 0.0) -> "VotePosterior":
        """Fit ``alpha`` and ``gamma`` by maximum likelihood of ``truth`` (held-out cells' own labels).

        Parameters
        ----------
        similarities, labels
            ``(n, >= k)`` each held-out cell's neighbours among the other reference cells, best first.
        truth
            ``(n,)`` the held-out cells' label codes.
        prior
            ``(n_classes,)`` the reference's label frequencies.
        k
            Neighbours that vote.
        smoothing
            Share of each held-out cell's weight spread over the other labels (:func:`smoothed_targets`), so
            that a few held-out cells all voted right do not make the vote certain (``0``: plain likelihood).
        """
        truth = np.asarray(truth, dtype=np.int64)
        prior = np.asarray(prior, dtype=np.float64)
        if len(truth) == 0:
            raise InputError("Fitting the label posterior needs held-out labeled reference cells; found none.")
        votes = class_votes(np.asarray(similarities)[:, :k], np.asarray(labels)[:, :k], len(prior))
        targets = smoothed_targets(truth, len(prior), smoothing)

        def nll(theta: np.ndarray) -> float:
            alpha, gamma = np.exp(theta)
            return _mean_nll(gamma * np.log(votes + alpha * prior[None, :]), targets)

        grid = [np.log([a, g]) for a in (0.01, 0.1, 1.0) for g in (0.5, 1.0, 2.0, 4.0, 8.0)]
        start = min(grid, key=nll)
        bounds = [tuple(np.log(ALPHA_RANGE)), tuple(np.log(GAMMA_RANGE))]
        best = minimize(nll, start, method="L-BFGS-B", bounds=bounds)
        alpha, gamma = np.exp(best.x if best.fun <= nll(start) else start)
        return cls(alpha=float(alpha), gamma=float(gamma), prior=prior, k=int(k))

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "gamma": self.gamma, "prior": [float(p) for p in self.prior], "k": self.k}

    @classmethod
    def from_dict(cls, d: dict) -> "VotePosterior":
        prior = np.asarray(d["prior"], dtype=np.float64)
        alpha, gamma, k = float(d["alpha"]), float(d["gamma"]), int(d["k"])
        if prior.ndim != 1 or len(prior) < 1 or not np.all(np.isfinite(prior)) or (prior < 0).any() \
                or not np.isclose(prior.sum(), 1.0, atol=1e-6):
            raise ValueError("prior must be label frequencies summing to one")
        inside = [lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9) for v, (lo, hi) in ((alpha, ALPHA_RANGE), (gamma, GAMMA_RANGE))]
        if not all(inside) or k < 1:
            raise ValueError(f"alpha {alpha}, gamma {gamma} or k {k} out of range")
        return cls(alpha=alpha, gamma=gamma, prior=prior, k=k)


def pool_posteriors(posteriors: list[np.ndarray], tau: float = 1.0) -> np.ndarray:
    """``(n, n_classes)``: the rows of ``prod_i posteriors[i] ** tau``, scaled to sum to one (in logs).

    A label any opinion gives probability zero keeps zero; a row all opinions together rule out
    entirely (impossible for smoothed votes) falls back to the first opinion.
    """
    with np.errstate(divide="ignore"):
        log_p = tau * sum(np.log(np.asarray(p, dtype=np.float64)) for p in posteriors)
    finite = np.isfinite(log_p).any(axis=1)
    out = np.array(posteriors[0], dtype=np.float64, copy=True)
    if finite.any():
        rows = log_p[finite]
        out[finite] = np.exp(rows - logsumexp(rows, axis=1, keepdims=True))
    return out


def smoothed_targets(truth: np.ndarray, n_classes: int, smoothing: float) -> np.ndarray:
    """``(n, n_classes)`` targets of a calibration fit: ``1 - smoothing`` on each cell's label, the rest spread
    evenly over the other labels.

    With ``smoothing = 1 / (n + 2)`` for ``n`` held-out cells this is Platt's (1999) correction: the fit sees
    the held-out cells as if one more had gone each way, so that perfectly separated held-out cells (a few,
    all voted right) give a sure but not a certain posterior, and many held-out cells are barely changed.
    """
    truth = np.asarray(truth, dtype=np.int64)
    if not 0.0 <= smoothing < 1.0:
        raise InputError(f"smoothing must lie in [0, 1), got {smoothing}.")
    if n_classes < 2:  # no other label to spread over
        smoothing = 0.0
    targets = np.full((len(truth), n_classes), smoothing / max(n_classes - 1, 1))
    targets[np.arange(len(truth)), truth] = 1.0 - smoothing
    return targets


def platt_smoothing(n_cells: int) -> float:
    """Platt's (1999) smoothing ``1 / (n + 2)`` for a calibration fit on ``n_cells`` held-out cells."""
    return 1.0 / (max(int(n_cells), 0) + 2)


def _mean_nll(log_evidence: np.ndarray, targets: np.ndarray) -> float:
    """Mean over rows of the cross-entropy of ``targets`` under ``softmax(log_evidence)`` (a target of zero
    reads nothing, even where the evidence is ``-inf``)."""
    log_p = log_evidence - logsumexp(log_evidence, axis=1, keepdims=True)
    terms = np.multiply(targets, log_p, out=np.zeros_like(log_p), where=targets > 0)
    return float(-np.mean(terms.sum(axis=1)))


def fit_pool_power(posteriors: list[np.ndarray], truth: np.ndarray, smoothing: float = 0.0) -> float:
    """The power ``tau`` of :func:`pool_posteriors` that maximizes the likelihood of ``truth`` (label codes of
    held-out cells; ``smoothing`` as in :meth:`VotePosterior.fit`)."""
    from scipy.optimize import minimize_scalar

    truth = np.asarray(truth, dtype=np.int64)
    if len(truth) == 0:
        raise InputError("Fitting the pooled posterior needs held-out labeled reference cells; found none.")
    log_p = sum(np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-300, None)) for p in posteriors)
    targets = smoothed_targets(truth, log_p.shape[1], smoothing)

    def nll(log_tau: float) -> float:
        return _mean_nll(np.exp(log_tau) * log_p, targets)

    best = minimize_scalar(nll, bounds=tuple(np.log(TAU_RANGE)), method="bounded")
    return float(np.exp(best.x))


def adjust_to_query_proportions(posterior: np.ndarray, prior: np.ndarray, strength: float = 1.0,
                                max_iter: int = 200, tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """The posterior moved to the query's own label proportions, and those proportions.

    EM (Saerens et al., 2002): ``q`` is the mean of the posteriors reweighted by ``q / prior``, here
    with a Dirichlet prior of ``strength * n`` pseudo-cells distributed as the reference, so that a
    query of ``n`` cells can at most move its proportions half-way from the reference's to what its
    cells alone say (at ``strength=1``). Labels the reference lacks stay absent.

    Parameters
    ----------
    posterior
        ``(n, n_classes)`` posteriors under the reference's proportions.
    prior
        ``(n_classes,)`` the reference's proportions.
    strength
        Weight of the reference's proportions, in query sizes.

    Returns
    -------
    tuple
        The ``(n, n_classes)`` adjusted posterior and the ``(n_classes,)`` estimated proportions.
    """
    post = np.asarray(posterior, dtype=np.float64)
    ref = np.asarray(prior, dtype=np.float64)
    if post.ndim != 2 or post.shape[1] != len(ref):
        raise InputError(f"posterior must be (cells, {len(ref)}), got {post.shape}.")
    n = len(post)
    if n == 0:
        return post, ref.copy()
    ratio_of = lambda q: np.divide(q, ref, out=np.zeros_like(ref), where=ref > 0)  # noqa: E731
    q = ref.copy()
    for _ in range(max_iter):
        adjusted = post * ratio_of(q)[None, :]
        adjusted /= adjusted.sum(axis=1, keepdims=True)
        new = (adjusted.sum(axis=0) + strength * n * ref) / (n + strength * n)
        done = np.abs(new - q).max() < tol
        q = new
        if done:
            break
    adjusted = post * ratio_of(q)[None, :]
    return adjusted / adjusted.sum(axis=1, keepdims=True), q
