"""The plain k-NN label vote: each query cell's nearest reference cells vote for their labels, weighted by
their cosine similarity (vectorized, no per-cell loop). Mapping's calibrated decision is
:mod:`scconcerto.mapping`; this vote is its baseline and serves quick predictions (e.g. balancing AdaBN).
:func:`transfer_streaming` runs the vote on a query that arrives block by block (atlas scale)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse as sp

from ..search import NeighborsResults, knn


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


@dataclass
class StreamedTransfer:
    """Per query cell: predicted label code and confidence for each label key."""

    codes: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray]


def transfer_streaming(blocks: Iterable[tuple[np.ndarray, np.ndarray]], index: faiss.Index,
                       reference_codes: dict[str, np.ndarray], n_classes: dict[str, int], n_cells: int,
                       k: int = 5, search_rows: int = 16_384) -> StreamedTransfer:
    """k-NN label transfer for query embeddings arriving block by block (``(rows, embedding)`` pairs).

    Only a few blocks of the query are held at a time (they are searched
    ``search_rows`` at a time: fewer, larger faiss calls); what is kept per cell
    is a label code (int32) and a confidence (float32) per key, so a query of
    millions of cells fits (e.g. with :func:`scconcerto.train.iter_embeddings`).
    """
    codes = {key: np.full(n_cells, -1, dtype=np.int32) for key in reference_codes}
    confidence = {key: np.zeros(n_cells, dtype=np.float32) for key in reference_codes}
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        rows = np.concatenate([r for r, _ in pending])
        neighbors = knn(np.concatenate([e for _, e in pending]), index, k)
        pending.clear()
        for key, ref_codes in reference_codes.items():
            result = vote(neighbors, ref_codes, n_classes[key])
            codes[key][rows] = result.codes
            confidence[key][rows] = result.confidence

    held = 0
    for rows, emb in blocks:
        pending.append((np.asarray(rows), np.asarray(emb)))
        held += len(rows)
        if held >= search_rows:
            flush()
            held = 0
    if pending:
        flush()
    return StreamedTransfer(codes, confidence)
