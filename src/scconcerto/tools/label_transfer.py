"""The plain k-NN label vote: each query cell's nearest reference cells vote for their labels, weighted by
their cosine similarity (vectorized, no per-cell loop). Mapping's calibrated decision is
:mod:`scconcerto.mapping`; this vote is its baseline and serves quick predictions (e.g. balancing AdaBN)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .neighbors import NeighborsResults


@dataclass(frozen=True)
class LabelTransfer:
    """Predicted label codes, their vote share (0-1) and the full vote matrix."""

    codes: np.ndarray
    confidence: np.ndarray
    votes: np.ndarray

    def take(self, rows: np.ndarray) -> "LabelTransfer":
        """The transfer of ``rows`` only."""
        return LabelTransfer(codes=self.codes[rows], confidence=self.confidence[rows], votes=self.votes[rows])


def label_counts(reference_codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Labeled reference cells per label code (``-1``, unlabeled, not counted), ``(n_classes,)``."""
    codes = np.asarray(reference_codes)
    return np.bincount(codes[codes >= 0], minlength=n_classes)[:n_classes]


def vote(neighbors: NeighborsResults, reference_codes: np.ndarray, n_classes: int) -> LabelTransfer:
    """Similarity-weighted vote of each query cell's neighbours.

    Reference cells with code ``-1`` (unlabeled) do not vote; negative similarities count as zero.
    Confidence is the winning label's share of the vote weight (0 when no neighbour could vote).
    """
    n_query, k = neighbors.indices.shape
    codes = reference_codes[neighbors.indices].ravel()
    weights = np.clip(neighbors.similarities.ravel(), 0.0, None).astype(np.float64)
    ok = codes >= 0
    rows = np.repeat(np.arange(n_query), k)[ok]
    votes = sp.coo_matrix((weights[ok], (rows, codes[ok])), shape=(n_query, n_classes)).toarray()
    total = votes.sum(axis=1)
    best = votes.argmax(axis=1)
    conf = np.divide(votes[np.arange(n_query), best], total, out=np.zeros(n_query), where=total > 0)
    return LabelTransfer(codes=best.astype(np.int64), confidence=conf.astype(np.float32),
                         votes=votes.astype(np.float32))
