"""Label keys from coarse to fine: a fine label must belong to the coarse label predicted for the cell."""

from __future__ import annotations

import numpy as np

__all__ = ["parent_labels", "within_parent"]


def parent_labels(fine_codes: np.ndarray, coarse_codes: np.ndarray, n_fine: int, n_coarse: int) -> np.ndarray:
    """``(n_fine,)`` the coarse label most reference cells of each fine label carry (``-1``: none labeled both)."""
    fine, coarse = np.asarray(fine_codes), np.asarray(coarse_codes)
    both = (fine >= 0) & (coarse >= 0)
    counts = np.zeros((n_fine, n_coarse), dtype=np.int64)
    np.add.at(counts, (fine[both], coarse[both]), 1)
    return np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)


def within_parent(posterior: np.ndarray, parents: np.ndarray, coarse_prediction: np.ndarray) -> np.ndarray:
    """The fine posterior restricted to the fine labels whose parent is each cell's coarse prediction, renormalized.

    A cell none of whose fine labels with probability above zero belongs to its coarse label keeps its flat
    posterior (the hierarchy's tables disagree there; the flat answer is the honest one).
    """
    post = np.asarray(posterior, dtype=np.float64)
    allowed = np.asarray(parents)[None, :] == np.asarray(coarse_prediction)[:, None]
    restricted = np.where(allowed, post, 0.0)
    total = restricted.sum(axis=1, keepdims=True)
    return np.where(total > 0, restricted / np.where(total > 0, total, 1.0), post)
