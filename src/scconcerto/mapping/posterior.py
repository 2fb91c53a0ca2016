"""The label posterior of a query cell: a calibrated kernel vote of its nearest reference cells.

For a cell with candidate neighbours ``j = 1..K`` (cosine similarities ``s_j``, best first) whose
labels are ``y_j``::

    p(c | x) = (sum_j exp(beta * (s_j - s_1)) [y_j = c] + alpha * prior_c) / normalizer

``beta`` (how fast a neighbour's weight falls with its similarity) and ``alpha`` (how much the
reference's label frequencies ``prior`` count where the neighbours are few or far) are fitted on held-out
reference cells by maximum likelihood (:meth:`KernelPosterior.fit`), so the posterior is calibrated on the
reference: a cell given probability 0.8 is right about 80 % of the time there. Unlabeled reference cells
(code ``-1``) take a neighbour's place but vote for nothing.

A query whose label proportions differ from the reference's can have the posterior's prior moved to its
own proportions, estimated by EM (Saerens et al., 2002) with the reference's proportions as a Dirichlet
prior (:func:`adjust_to_query_proportions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from .._errors import InputError

__all__ = ["KernelPosterior", "adjust_to_query_proportions", "class_evidence", "label_frequencies"]

#: Search ranges of the fitted parameters (``beta`` in 1 / cosine units, ``alpha`` in votes).
BETA_RANGE = (0.5, 500.0)
ALPHA_RANGE = (1e-3, 10.0)


def label_frequencies(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of each label among the labeled cells (``-1`` not counted), float64; uniform without labels."""
    codes = np.asarray(codes)
    counts = np.bincount(codes[codes >= 0], minlength=n_classes)[:n_classes].astype(np.float64)
    return counts / counts.sum() if counts.sum() > 0 else np.full(n_classes, 1.0 / n_classes)


def class_evidence(similarities: np.ndarray, labels: np.ndarray, n_classes: int, beta: float) -> np.ndarray:
    """``(n, n_classes)`` kernel weight of each cell's candidates per label.

    ``similarities`` and ``labels`` are ``(n, K)`` (best first; label ``-1`` votes for nothing). Weights
    are ``exp(beta * (s_j - s_1))``, so the best candidate weighs 1.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, k = labels.shape
    if k == 0:
        return np.zeros((n, n_classes))
    weights = np.exp(beta * (sims - sims[:, :1]))
    ok = labels >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], labels.shape)
    return sp.coo_matrix((weights[ok], (rows[ok], labels[ok])), shape=(n, n_classes)).toarray()


@dataclass(frozen=True)
class KernelPosterior:
    """Calibrated kernel vote over a cell's ``k`` nearest reference cells (see the module docstring).

    Attributes
    ----------
    beta
        Sharpness of the kernel.
    alpha
        Weight of the reference's label frequencies.
    prior
        ``(n_classes,)`` label frequencies of the reference.
    k
        Candidates per cell.
    """

    beta: float
    alpha: float
    prior: np.ndarray
    k: int

    @property
    def n_classes(self) -> int:
        return int(len(self.prior))

    def posterior(self, similarities: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` float64 posterior from each cell's candidates (``(n, >= k)``, best first)."""
        evidence = class_evidence(similarities[:, :self.k], labels[:, :self.k], self.n_classes, self.beta)
        evidence += self.alpha * self.prior[None, :]
        return evidence / evidence.sum(axis=1, keepdims=True)

    @classmethod
    def fit(cls, similarities: np.ndarray, labels: np.ndarray, truth: np.ndarray, prior: np.ndarray,
            k: int) -> "KernelPosterior":
        """Fit ``beta`` and ``alpha`` by maximum likelihood of ``truth`` (held-out cells' own labels).

        Parameters
        ----------
        similarities, labels
            ``(n, >= k)`` each held-out cell's candidates among the other reference cells, best first.
        truth
            ``(n,)`` the held-out cells' label codes.
        prior
            ``(n_classes,)`` the reference's label frequencies.
        k
            Candidates per cell.
        """
        truth = np.asarray(truth, dtype=np.int64)
        prior = np.asarray(prior, dtype=np.float64)
        if len(truth) == 0:
            raise InputError("Fitting the label posterior needs held-out labeled reference cells; found none.")
        sims, labs = np.asarray(similarities)[:, :k], np.asarray(labels)[:, :k]
        rows = np.arange(len(truth))

        def nll(theta: np.ndarray) -> float:
            beta, alpha = np.exp(theta)
            evidence = class_evidence(sims, labs, len(prior), beta) + alpha * prior[None, :]
            return float(-np.mean(np.log(evidence[rows, truth] / evidence.sum(axis=1))))

        grid = [np.log([b, a]) for b in (2.0, 5.0, 10.0, 20.0, 50.0, 100.0) for a in (0.01, 0.1, 1.0)]
        start = min(grid, key=nll)
        bounds = [tuple(np.log(BETA_RANGE)), tuple(np.log(ALPHA_RANGE))]
        best = minimize(nll, start, method="L-BFGS-B", bounds=bounds)
        beta, alpha = np.exp(best.x if best.fun <= nll(start) else start)
        return cls(beta=float(beta), alpha=float(alpha), prior=prior, k=int(k))

    def to_dict(self) -> dict:
        return {"beta": self.beta, "alpha": self.alpha, "prior": [float(p) for p in self.prior], "k": self.k}

    @classmethod
    def from_dict(cls, d: dict) -> "KernelPosterior":
        prior = np.asarray(d["prior"], dtype=np.float64)
        beta, alpha, k = float(d["beta"]), float(d["alpha"]), int(d["k"])
        if prior.ndim != 1 or len(prior) < 1 or not np.all(np.isfinite(prior)) or (prior < 0).any() \
                or not np.isclose(prior.sum(), 1.0, atol=1e-6):
            raise ValueError("prior must be label frequencies summing to one")
        if not (BETA_RANGE[0] <= beta <= BETA_RANGE[1] and ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1] and k >= 1):
            raise ValueError(f"beta {beta}, alpha {alpha} or k {k} out of range")
        return cls(beta=beta, alpha=alpha, prior=prior, k=k)


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
