"""Hierarchical label transfer: level 1 against the whole reference, each next level within the predicted parent.

A query cell predicted ``T cell`` at level 1 gets its level-2 label (``CD4 T``,
``CD8 T``...) from its nearest reference cells *among the reference's T
cells*, so a fine label can never contradict its coarse one. The search loops
over parent labels (a handful), never over cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._errors import InputError
from .label_transfer import LabelTransfer, vote
from .neighbors import NeighborsResults, exact_search, l2_normalize

__all__ = ["hierarchical_transfer", "knn_within_groups", "with_neighbors_of_labels"]


def knn_within_groups(query: np.ndarray, reference: np.ndarray, query_group: np.ndarray,
                      reference_group: np.ndarray, k: int = 5) -> NeighborsResults:
    """Cosine k-NN of each query row among the reference rows of the same group (exact).

    faiss on the CPU, or the GPU inside :func:`~scconcerto.tools.neighbors.search_device`.

    Parameters
    ----------
    query, reference
        Embeddings ``(n_query, d)`` and ``(n_ref, d)``.
    query_group, reference_group
        Integer group of each row; a query row is searched among reference rows
        of its group only (all reference rows when its group has none).
    k
        Neighbours per query row. A group with fewer than ``k`` reference rows
        pads the result with its last neighbour at similarity 0 (no vote weight).

    Returns
    -------
    NeighborsResults
        Row numbers into the whole ``reference``.
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    q = l2_normalize(query)
    idx = np.zeros((len(q), k), dtype=np.int64)
    sims = np.zeros((len(q), k), dtype=np.float32)
    for g in np.unique(query_group):
        rows = np.flatnonzero(query_group == g)
        members = np.flatnonzero(reference_group == g)
        if members.size == 0:
            members = np.arange(len(reference))
        k_eff = min(k, members.size)
        # only the group's cells are copied (normalized): the whole reference may be an atlas
        s, i = exact_search(q[rows], l2_normalize(reference[members]), k_eff)
        if k_eff < k:  # pad: repeat the last neighbour with no weight
            i = np.concatenate([i, np.repeat(i[:, -1:], k - k_eff, axis=1)], axis=1)
            s = np.concatenate([s, np.zeros((len(rows), k - k_eff), dtype=np.float32)], axis=1)
        idx[rows] = members[i]
        sims[rows] = s
    return NeighborsResults(indices=idx, similarities=sims)


def with_neighbors_of_labels(neighbors: NeighborsResults, rows: np.ndarray, query: np.ndarray,
                             reference: np.ndarray, reference_codes: np.ndarray, labels: np.ndarray,
                             reference_rows: np.ndarray | None = None) -> NeighborsResults:
    """``neighbors`` with each of ``rows`` given its nearest reference cells of the label ``labels[i]``.

    For cells whose label was set by another space (the expression space's veto), so that
    their neighbourhood features describe them against the cells of the label they get.

    Parameters
    ----------
    neighbors
        The search result to amend (not modified).
    rows
        Rows of ``neighbors`` to replace.
    query
        ``(len(rows), d)`` those cells' embeddings.
    reference, reference_codes
        The reference cells searched and their label codes.
    labels
        ``(len(rows),)`` the label code each row is searched within.
    reference_rows
        Row numbers that ``neighbors`` uses for the rows of ``reference`` (default: the same).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return neighbors
    found = knn_within_groups(query, reference, labels, reference_codes, k=neighbors.n_neighbors)
    indices, sims = neighbors.indices.copy(), neighbors.similarities.copy()
    indices[rows] = found.indices if reference_rows is None else np.asarray(reference_rows)[found.indices]
    sims[rows] = found.similarities
    return NeighborsResults(indices=indices, similarities=sims)


def hierarchical_transfer(query: np.ndarray, reference: np.ndarray, level_codes: Sequence[np.ndarray],
                          n_classes: Sequence[int], k: int = 5,
                          first_neighbors: NeighborsResults | None = None,
                          first_transfer: LabelTransfer | None = None) -> list[tuple[NeighborsResults, LabelTransfer]]:
    """Transfer labels level by level, each level within the predicted label of the one above.

    Parameters
    ----------
    query, reference
        Embeddings.
    level_codes
        Reference label codes per level, coarse first (``-1``: unlabeled).
    n_classes
        Categories per level.
    k
        Neighbours per query cell.
    first_neighbors
        Level-1 neighbours over the whole reference, if already searched (e.g. with an approximate index).
    first_transfer
        Level-1 labels, if already voted (e.g. with a second opinion): they choose the level-2 parents.

    Returns
    -------
    list
        ``(neighbors, transfer)`` per level.
    """
    if len(level_codes) != len(n_classes) or not level_codes:
        raise InputError("Give one code array and one class count per level (at least one level).")
    if first_neighbors is None:
        first_neighbors = knn_within_groups(query, reference, np.zeros(len(query), np.int64),
                                            np.zeros(len(reference), np.int64), k)
    if first_transfer is None:
        first_transfer = vote(first_neighbors, level_codes[0], n_classes[0])
    out = [(first_neighbors, first_transfer)]
    for codes, n in zip(level_codes[1:], n_classes[1:]):
        parent_pred = out[-1][1].codes
        parent_ref = np.asarray(level_codes[len(out) - 1])
        nb = knn_within_groups(query, reference, parent_pred, parent_ref, k)
        out.append((nb, vote(nb, codes, n)))
    return out
