"""What contrastive training of a reference needs besides its cells: the expression space its neighbour
positives are searched in, the calibration hold-out, and the weights that balance each source's composition.

:func:`prepare_reference_training` attaches the positives (``cells.positives``, or ``cells.positive_search`` for
the streamed windows of a backed reference) and the balance weights (``cells.balance_weights``) to the training
cells, and returns what the model keeps (:class:`ReferenceTraining`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import InputError
from ..data.positives import SHARED_CANDIDATES
from ..data.scaled_space import ScaledSpace, scaled_expression

log = logging.getLogger("scconcerto")

#: Labeled cells whose labels do not shape the positives: the confidence is calibrated on them.
CALIBRATION_FRACTION = 0.25
CALIBRATION_MAX_CELLS = 5_000
#: Where neighbour positives are searched: the mean cosine similarity in the centred and the scaled expression
#: spaces (``"centred"``), in the uncentred SVD and the scaled space (``"joint"``: models trained before
#: 2026-12-08), or in the uncentred SVD alone (``"svd"``: models trained before the option).
POSITIVE_SPACES = ("centred", "joint", "svd")
#: How a cell's positives are chosen among its nearest cells: its ``k`` nearest (``"nearest"``), or the ``k``
#: that share most of its :data:`~scconcerto.data.positives.SHARED_CANDIDATES` nearest cells (``"shared"``).
POSITIVE_RANKS = ("nearest", "shared")
#: Where a cell's positives may come from: any source, or its own only (models trained before 2026-12-07).
POSITIVE_SOURCES = ("any", "same")
BALANCE_CHOICES = ("auto", "labels", "clusters", "none")
#: How the sources are batch-normalized: ``"source"`` (one set of statistics per source), ``"shared"`` (one for
#: all) or ``"auto"`` (shared when :func:`~scconcerto.data.source_effect.source_shift` is below
#: :data:`~scconcerto.data.source_effect.SHARED_BELOW`).
SOURCE_NORMS = ("auto", "source", "shared")


@dataclass
class ReferenceTraining:
    """What :func:`prepare_reference_training` decided for the training of a reference.

    Attributes
    ----------
    scaled
        The reference cells in their scaled expression space and that space (mapping reads it), or ``None``.
    calibration_rows
        Labeled rows kept out of the label-aware positives (they calibrate mapping), or ``None``.
    label_positives
        Whether labels shaped the positives.
    positive_pool_cells
        How many cells a cell's positives are searched among (0: the paper's views).
    positive_space
        One of :data:`POSITIVE_SPACES`: the space the positives were searched in.
    positive_rank
        ``"shared"`` or ``"nearest"`` (:data:`POSITIVE_RANKS`): how they were chosen among a cell's nearest cells.
    positive_sources
        ``"any"`` or ``"same"``: the sources the positives were searched among (``"same"`` without positives).
    balance, balance_groups
        What was balanced (``"labels"``, ``"clusters"`` or ``"none"``) and each cell's group; the groups are
        replaced by the embedding's clusters half-way through training (:func:`balance_callbacks`).
    source_norm
        ``"source"`` or ``"shared"``: whether the sources were normalized apart or together.
    source_shift
        The sources' measured technical shift (``None`` when not measured: one source, or not ``"auto"``).
    source_domains
        With ``"shared"``, each cell's own source code (``cells.domains`` then holds zeros for training).
    """

    scaled: tuple[np.ndarray, ScaledSpace] | None
    calibration_rows: np.ndarray | None
    label_positives: bool
    positive_pool_cells: int
    positive_space: str
    positive_sources: str
    balance: str
    balance_groups: np.ndarray | None
    source_norm: str = "source"
    source_shift: float | None = None
    source_domains: np.ndarray | None = None
    positive_rank: str = "nearest"


def prepare_reference_training(cells: Any, labels: list[np.ndarray], positive_neighbors: int,
                               label_positives: bool, positive_space: str, positive_sources: str, balance: str,
                               seed: int, source_norm: str = "source", positive_rank: str = "nearest"
                               ) -> ReferenceTraining:
    """Attach neighbour positives and balance weights to the training ``cells`` of a reference.

    ``labels`` are the label codes under each label key (``-1``: missing); the options are those of
    :meth:`scconcerto.Concerto.train`. With sources normalized together (``source_norm``), ``cells.domains``
    holds zeros until :func:`restore_sources`.
    """
    if positive_space not in POSITIVE_SPACES:
        raise InputError(f"positive_space must be one of {', '.join(POSITIVE_SPACES)}, got {positive_space!r}.")
    if positive_rank not in POSITIVE_RANKS:
        raise InputError(f"positive_rank must be one of {', '.join(POSITIVE_RANKS)}, got {positive_rank!r}.")
    if positive_sources not in POSITIVE_SOURCES:
        raise InputError(f"positive_sources must be one of {', '.join(POSITIVE_SOURCES)}, got {positive_sources!r}.")
    if balance not in BALANCE_CHOICES:
        raise InputError(f"balance must be one of {', '.join(BALANCE_CHOICES)}, got {balance!r}.")
    if source_norm not in SOURCE_NORMS:
        raise InputError(f"source_norm must be one of {', '.join(SOURCE_NORMS)}, got {source_norm!r}.")
    searched = positive_neighbors > 0
    expression, scaled = _expression_spaces(cells, seed, scaled=searched and positive_space != "svd")
    source_norm, shift, source_domains = _share_sources(cells, expression, source_norm, seed)
    plain = expression
    if searched and scaled is not None and positive_space == "centred":
        plain = _centred_expression(cells, seed)
    shaped, calibration_rows = _attach_positives(cells, labels, plain, scaled, positive_neighbors,
                                                 label_positives, positive_sources == "any", seed,
                                                 SHARED_CANDIDATES if positive_rank == "shared" else 0)
    groups, balanced = _attach_balance(cells, labels, expression, balance, seed)
    return ReferenceTraining(scaled=scaled, calibration_rows=calibration_rows, label_positives=shaped,
                             positive_pool_cells=_positive_pool(cells),
                             positive_space=positive_space if scaled is not None else "svd",
                             positive_sources=positive_sources if has_positives(cells) else "same",
                             balance=balanced, balance_groups=groups, source_norm=source_norm,
                             source_shift=shift, source_domains=source_domains,
                             positive_rank=positive_rank if has_positives(cells) else "nearest")


def _share_sources(cells: Any, expression: np.ndarray | None, source_norm: str, seed: int
                   ) -> tuple[str, float | None, np.ndarray | None]:
    """Decide whether the sources are normalized together; if so, give every training cell source 0.

    Returns the decision (``"source"`` or ``"shared"``), the measured shift (``"auto"`` only) and the
    cells' own source codes when they were replaced.
    """
    from ..data.source_effect import SHARED_BELOW, source_shift

    domains = np.asarray(cells.domains)
    if len(np.unique(domains)) < 2:
        return "source", None, None
    shift = None
    if source_norm == "auto":
        if expression is None:  # nothing to measure in: per-source statistics, as always before
            return "source", None, None
        shift = source_shift(expression, domains, seed=seed)
        source_norm = "shared" if shift < SHARED_BELOW else "source"
        log.debug("Technical shift between the sources %.3f (below %.2f: normalized together): normalized %s.",
                 shift, SHARED_BELOW, "together" if source_norm == "shared" else "apart")
    if source_norm == "source":
        return "source", shift, None
    cells.domains = np.zeros_like(domains)
    return "shared", shift, domains


def restore_sources(network: Any, cells: Any, training: ReferenceTraining) -> None:
    """After training with the sources normalized together: every source of the reference takes the shared
    statistics and affine of the batch normalization, and ``cells.domains`` its own codes again."""
    if training.source_domains is None:
        return
    from ..nn.dsbn import DomainSpecificBatchNorm1d

    cells.domains = training.source_domains
    sources = list(range(1, int(training.source_domains.max()) + 1))
    for module in network.modules():
        if isinstance(module, DomainSpecificBatchNorm1d):
            module.copy_domain(0, sources)


def has_positives(cells: Any) -> bool:
    """Whether the training cells draw their student views from neighbour positives."""
    return cells.positives is not None or cells.positive_search is not None


def balance_callbacks(cells: Any, training: ReferenceTraining, epochs: int, seed: int) -> list:
    """With balance by clusters, a callback that finds the clusters again in the embedding half-way through
    training (and keeps them in ``training.balance_groups``)."""
    if training.balance != "clusters" or epochs < 2:
        return []
    from .balance import RefreshBalance

    def keep(groups: np.ndarray) -> None:
        training.balance_groups = groups.astype(np.int64)

    return [RefreshBalance(cells, epochs // 2 - 1, seed, keep)]


def label_groups(codes: list[np.ndarray]) -> np.ndarray:
    """One group code per cell from its codes under every label key; ``-1`` when any is missing."""
    stacked = np.stack([np.asarray(c, dtype=np.int64) for c in codes], axis=1)
    missing = (stacked < 0).any(axis=1)
    _, groups = np.unique(stacked, axis=0, return_inverse=True)
    groups = groups.astype(np.int64).ravel()
    groups[missing] = -1
    return groups


def _expression_spaces(cells: Any, seed: int, scaled: bool = False
                       ) -> tuple[np.ndarray | None, tuple[np.ndarray, ScaledSpace] | None]:
    """The reference in a truncated-SVD space of its expression, and with ``scaled`` in its scaled expression
    space too (fitted on a sample, projected block by block: in memory or on disk alike)."""
    from ..data.positives import expression_space

    if cells.n_cells < 3:
        return None, None
    try:
        expression, _ = expression_space(cells, seed=seed)
    except ValueError as exc:  # e.g. a single expressed gene: nothing to decompose
        log.info("No expression space for the reference (%s).", exc)
        return None, None
    return expression, scaled_expression(cells, seed) if scaled else None


def _centred_expression(cells: Any, seed: int) -> np.ndarray:
    """The cells in the centred expression space (PCA of their normalized values, fitted on the same sample as
    the scaled space, so it exists whenever that does; projected block by block)."""
    from ..data.scaled_space import fit_scaled_space

    return fit_scaled_space(cells, seed=seed, scale=False).project(cells)


def _attach_positives(cells: Any, labels: list[np.ndarray], expression: np.ndarray | None,
                      scaled: tuple[np.ndarray, ScaledSpace] | None, k: int, label_positives: bool,
                      across_sources: bool, seed: int, candidates: int = 0) -> tuple[bool, np.ndarray | None]:
    """Set how the cells' neighbour positives are found: ``cells.positives`` searched among all cells in memory,
    or ``cells.positive_search`` for the streamed windows of a backed reference (one search for both).

    ``candidates``: rank that many nearest cells by shared neighbours (:class:`~scconcerto.data.positives.PositiveSearch`).
    Returns whether labels shaped them, and the labeled rows kept out of that (the calibration hold-out).
    """
    from ..data.positives import PositiveSearch, joint_components, neighbor_positives, positive_codes

    if k == 0:
        return False, None
    groups = calibration_rows = None
    if label_positives and labels:
        groups = label_groups(labels)
        labeled = np.flatnonzero(groups >= 0)
        rng = np.random.default_rng(seed)
        n_open = int(min(CALIBRATION_MAX_CELLS, round(CALIBRATION_FRACTION * labeled.size)))
        calibration_rows = np.sort(rng.choice(labeled, n_open, replace=False)) if n_open else None
    components = expression
    if components is not None and scaled is not None:
        components = joint_components(components, scaled[0])
    if components is None:  # e.g. a single expressed gene: nothing to search in
        log.info("No expression sketch of the reference: training with the paper's views.")
        return False, None
    if cells.on_disk:  # searched window by window as the cells are streamed
        cells.positive_search = PositiveSearch(k, components, positive_codes(cells.n_cells, groups, calibration_rows),
                                               across_sources, candidates)
    else:  # the same search, once, among all cells
        cells.positives = neighbor_positives(cells, k, labels=groups, open_rows=calibration_rows, seed=seed,
                                             components=components, across_sources=across_sources,
                                             candidates=candidates)
    if groups is not None:  # the labels the supervised term of training reads (never the held-out ones)
        cells.training_labels = groups.copy()
        if calibration_rows is not None:
            cells.training_labels[calibration_rows] = -1
    return groups is not None, calibration_rows


def _attach_balance(cells: Any, labels: list[np.ndarray], expression: np.ndarray | None, balance: str, seed: int
                    ) -> tuple[np.ndarray | None, str]:
    """Set ``cells.balance_weights`` for ``balance``; return the groups and what was balanced.

    ``"auto"`` means labels when the model has label keys, else clusters: first those of the expression space,
    then (from half-way through training) those of the embedding. A single source has nothing to balance.
    """
    from ..data.composition import balance_groups, source_balance_weights

    domains = cells.domains
    if balance == "none" or len(np.unique(domains)) < 2:
        return None, "none"
    if balance == "auto":
        balance = "labels" if labels else "clusters"
    if balance == "labels":
        if not labels:
            raise InputError("balance='labels' needs label keys: pass label_key= to Concerto, or use "
                             "balance='clusters' (or 'auto').")
        groups = label_groups(labels)
    else:
        if expression is None:  # no expression space: plain statistics until the embedding's clusters
            return None, "clusters"
        groups = balance_groups(expression, domains, seed=seed)
    cells.balance_weights = source_balance_weights(groups, domains)
    return groups.astype(np.int64), balance


def _positive_pool(cells: Any) -> int:
    """How many cells a cell's neighbour positives are searched among: all cells in memory, a streamed window's
    (at most) on disk; 0 without neighbour positives."""
    from ..data.streaming import DEFAULT_CHUNK_SIZE, DEFAULT_WINDOW_CHUNKS

    if not has_positives(cells):
        return 0
    return cells.n_cells if not cells.on_disk else min(cells.n_cells, DEFAULT_CHUNK_SIZE * DEFAULT_WINDOW_CHUNKS)
