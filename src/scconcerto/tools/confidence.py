"""Per-cell confidence of a k-NN label transfer, calibrated on the reference by leave-one-type-out.

The confidence of a transferred label is the product of two probabilities,
each a small logistic model of the cell's neighbourhood fitted on the
reference itself:

* **correctness** ``P(right | seen type)``: do the neighbours agree (vote
  share) and are they close (cosine similarity)? With the expression spaces'
  veto (every cell is then searched there), also: how much of the cell's vote
  among its neighbours in the expression space backs the label it was given
  (:data:`AGREEMENT_FEATURE`; a wrong transfer often has a clean neighbourhood
  in the label-shaped embedding but not in expression). Fitted on reference
  cells searched against the other reference cells: is their own label recovered?
* **novelty** ``P(seen type)``: a cell of a type the reference lacks still finds
  k neighbours, often of one type, but it is closer to *other query cells* (its
  own type) than to the reference. The log ratio of the two similarities, at
  matched density (both sides subsampled to the same size), is the key
  feature; the vote share and absolute similarities complete it. Fitted by
  leave-one-type-out: the reference is split into a pseudo-query half and a
  pseudo-reference half; pseudo-query cells searched against the
  pseudo-reference are *seen*, and those of each type ``t`` searched against the
  pseudo-reference without ``t`` are *unseen* (each left-out type weighs the
  same, and the unseen group as much as the seen one).

**Expression features.** When the model keeps the reference's expression space
(a truncated SVD of the normalized expression, fitted at training for the
neighbour positives), the novelty model of queries with neighbourhoods of their
own also sees the similarity and the density ratio in that space
(:func:`expression_features`): the trained embedding is shaped by the
reference's labels and can pull a new type onto a known one, the expression
space cannot. That space is not batch-corrected, so both features are taken
relative to the query's median cell (the pseudo-query's in the calibration):
a query from another technology is not less "seen" as a whole. Features are
standardized before the logistic fits (the L2 penalty would otherwise depend on
their units). Pancreas Wang -> Xin with beta cells left out of the reference:
seen-vs-unseen AUROC 0.786 -> 0.969 (benchmark task ``unseen_type``); PBMC
without B cells 0.995 -> 0.997, without CD8 T cells 0.813 -> 0.785 (measured when they were added)
(``benchmarks/mapping.py --only unseen``).

**Second opinion.** When mapping blends the expression space's vote into
contested votes (:func:`~scconcerto.tools.label_transfer.blend_votes`), the
calibration does the same for its pseudo-query cells (searched among the
pseudo-reference, or the pseudo-reference without their type, in that space),
so the vote share and winner the confidence models see are those of mapping. The same holds for the
veto of a unanimous expression-space vote (all pseudo-query cells are searched in that space then) and,
with the scaled expression space, for its blend and its rare labels' claims (rare by their counts in the
whole reference, as at mapping); an overruled cell's neighbourhood features are taken among the reference
cells of its new label, in both. Claimed cells are then left out of the fits: a claim is a rule outside the
neighbourhood the models describe.

A query too small to have neighbours of its own (fewer than
:data:`MIN_QUERY_CELLS` cells) uses a novelty model without the ratio. The
default *unknown* threshold is the confidence below which 5 % of the
pseudo-query's right transfers fall (a target false-rejection rate on seen
types; Youden's best separating threshold is reported too, but left-out types
of a trained embedding are easier to tell apart than truly unseen ones, so it
sits too low); it is stored with the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._errors import InputError
from .hierarchy import with_neighbors_of_labels
from .label_transfer import (LabelTransfer, contested_rows, label_counts, rare_labels, second_opinion, share_of,
                             vote)
from .neighbors import NeighborsResults, exact_search, knn, l2_normalize

__all__ = ["AGREEMENT_FEATURE", "CORRECTNESS_FEATURES", "EXPRESSION_FEATURES", "MIN_QUERY_CELLS", "NOVELTY_FEATURES",
           "CalibrationResult", "ConfidenceModel", "LogisticScore", "calibrate_confidence", "centred_on",
           "density_ratio", "expression_centres", "expression_features", "neighborhood_features"]

NEIGHBORHOOD_FEATURES = ("vote_share", "winner_similarity", "top_similarity")
CORRECTNESS_FEATURES = ("vote_share", "winner_similarity", "top_similarity")
NOVELTY_FEATURES = ("vote_share", "winner_similarity", "top_similarity", "log_density_ratio")
NOVELTY_SMALL_FEATURES = ("vote_share", "winner_similarity", "top_similarity")
EXPRESSION_FEATURES = ("expression_similarity", "log_expression_density_ratio")
#: Correctness feature of models with the expression spaces' veto (every cell searched there): the share
#: of a cell's vote among its ``k`` nearest reference cells in the expression space that backs its label.
AGREEMENT_FEATURE = "expression_agreement"
#: Below this many cells a query has no neighbourhood of its own: the density ratio is not used.
MIN_QUERY_CELLS = 30
_MAX_DENSITY_CELLS = 10_000


# ---------------------------------------------------------------------------------------------- features
def neighborhood_features(neighbors: NeighborsResults, transfer: LabelTransfer,
                          reference_codes: np.ndarray) -> dict[str, np.ndarray]:
    """Vote share, mean similarity of the winner's voters, and top similarity of each query cell.

    Parameters
    ----------
    neighbors
        Query cells' neighbours among the reference cells.
    transfer
        The vote on those neighbours (:func:`~scconcerto.tools.vote`).
    reference_codes
        Label code of each reference cell (``-1``: unlabeled).

    Returns
    -------
    dict
        ``{name: (n_query,) float64}`` for the names in :data:`NEIGHBORHOOD_FEATURES`.
    """
    neighbor_codes = reference_codes[neighbors.indices]
    voted_winner = neighbor_codes == transfer.codes[:, None]
    n_winner = voted_winner.sum(axis=1)
    sims = np.clip(neighbors.similarities.astype(np.float64), 0.0, None)
    winner_sim = np.divide((sims * voted_winner).sum(axis=1), n_winner, out=np.zeros(len(n_winner)),
                           where=n_winner > 0)
    top = sims[:, 0] if sims.shape[1] else np.zeros(len(n_winner))
    return {"vote_share": transfer.confidence.astype(np.float64), "winner_similarity": winner_sim,
            "top_similarity": top}


def _mean_top_similarity(query: np.ndarray, base: np.ndarray, k: int, own: np.ndarray | None = None) -> np.ndarray:
    """Mean cosine similarity of each query row to its ``k`` nearest ``base`` rows.

    ``own[i]`` is the row of ``base`` that is query row ``i`` itself (``-1``: none); it is skipped.
    """
    if own is not None and len(base) < 2:  # one base cell: nothing but itself to skip
        return np.where(own == 0, 0.0, np.clip(query @ base[0], 0.0, None))
    k = max(1, min(k, len(base) - (own is not None)))
    sims = knn(query, base, k, exclude_self=own is not None, self_rows=own).similarities
    return np.clip(sims, 0.0, None).mean(axis=1)


def density_ratio(query: np.ndarray, reference: np.ndarray, query_pool: np.ndarray | None = None,
                  k: int = 5, max_cells: int = _MAX_DENSITY_CELLS, seed: int = 0,
                  query_rows_in_pool: np.ndarray | None = None, return_similarity: bool = False
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Log ratio of each query cell's similarity to the reference and to the other query cells.

    Both sides are subsampled (seeded) to the same number of cells
    ``m = min(len(reference), len(query_pool), max_cells)`` so that the ratio
    does not depend on their sizes; on each side the mean similarity of the
    ``k`` nearest cells is taken (the cell itself excluded from its own pool).
    A cell closer to the query than to the reference (``< 0``) hints at a type
    the reference lacks.

    Parameters
    ----------
    query
        ``(n, d)`` embedding of the cells to score.
    reference
        ``(n_ref, d)`` reference embedding.
    query_pool
        The query cells to compare with (default: ``query`` itself).
    k
        Neighbours on each side.
    max_cells
        Cap on ``m``.
    seed
        Seed of the subsamples.
    query_rows_in_pool
        Row of each ``query`` cell in ``query_pool`` (``-1``: absent); default: ``query`` is the pool.
    return_similarity
        Also return the similarity to the reference side (the ratio's numerator).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64 (and, with ``return_similarity``, the ``(n,)`` mean similarity to the reference).
    """
    rng = np.random.default_rng(seed)
    pool = query if query_pool is None else query_pool
    own = np.arange(len(query)) if query_pool is None else (
        np.full(len(query), -1) if query_rows_in_pool is None else np.asarray(query_rows_in_pool))
    m = int(min(len(reference), len(pool), max_cells))
    ref_rows = rng.choice(len(reference), m, replace=False) if len(reference) > m else np.arange(len(reference))
    pool_rows = np.sort(rng.choice(len(pool), m, replace=False)) if len(pool) > m else np.arange(len(pool))
    position = np.full(len(pool), -1)
    position[pool_rows] = np.arange(len(pool_rows))
    own_in_sub = np.where(own >= 0, position[np.maximum(own, 0)], -1)
    to_ref = _mean_top_similarity(query, reference[ref_rows], k)
    to_query = _mean_top_similarity(query, pool[pool_rows], k, own=own_in_sub)
    ratio = np.log(np.maximum(to_ref, 1e-3)) - np.log(np.maximum(to_query, 1e-3))
    return (ratio, to_ref) if return_similarity else ratio


def expression_features(query: np.ndarray, reference: np.ndarray, k: int = 5, seed: int = 0,
                        query_pool: np.ndarray | None = None, query_rows_in_pool: np.ndarray | None = None,
                        max_cells: int = _MAX_DENSITY_CELLS) -> dict[str, np.ndarray]:
    """Novelty features of cells in the reference's expression space (L2-normalized SVD coordinates).

    ``log_expression_density_ratio``: :func:`density_ratio` in that space;
    ``expression_similarity``: its numerator, the mean cosine similarity to the
    ``k`` nearest reference cells (at the ratio's matched sample size).
    """
    ratio, similarity = density_ratio(query, reference, query_pool, k=k, max_cells=max_cells, seed=seed,
                                      query_rows_in_pool=query_rows_in_pool, return_similarity=True)
    return {"expression_similarity": similarity.astype(np.float64), "log_expression_density_ratio": ratio}


def expression_centres(features: dict[str, np.ndarray]) -> dict[str, float]:
    """The query's median of each expression feature: both are read relative to the query's typical cell,
    since the expression space keeps batch effects (a query from another technology is not less "seen")."""
    return {name: float(np.median(features[name])) for name in EXPRESSION_FEATURES}


def centred_on(features: dict[str, np.ndarray], centres: dict[str, float]) -> dict[str, np.ndarray]:
    """``features`` with ``centres`` (:func:`expression_centres`) subtracted from the features they name."""
    return {name: v - centres[name] if name in centres else v for name, v in features.items()}


# ---------------------------------------------------------------------------------------------- models
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
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # numerically stable sigmoid

    def to_dict(self) -> dict:
        return {"features": list(self.features), "coef": list(self.coef), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> "LogisticScore":
        return cls(tuple(str(f) for f in d["features"]), tuple(float(c) for c in d["coef"]), float(d["intercept"]))

    @classmethod
    def fit(cls, features: dict[str, np.ndarray], names: tuple[str, ...], target: np.ndarray,
            weight: np.ndarray | None = None) -> "LogisticScore":
        from sklearn.linear_model import LogisticRegression

        x = np.column_stack([np.asarray(features[f], dtype=np.float64) for f in names])
        # fitted on standardized features, so that the L2 penalty does not depend on a feature's units
        # (similarities vary over a few hundredths, log ratios over units); folded back into raw units
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        clf = LogisticRegression(C=1.0, max_iter=1000).fit((x - mean) / scale, target, sample_weight=weight)
        coef = clf.coef_[0] / scale
        return cls(names, tuple(float(c) for c in coef), float(clf.intercept_[0] - coef @ mean))


@dataclass(frozen=True)
class ConfidenceModel:
    """Calibrated confidence of a label transfer and the default unknown threshold.

    Attributes
    ----------
    correctness
        ``P(right | seen)`` from :data:`CORRECTNESS_FEATURES`.
    novelty
        ``P(seen)`` from :data:`NOVELTY_FEATURES` (with the density ratio).
    novelty_small
        ``P(seen)`` without the density ratio, for queries of fewer than :data:`MIN_QUERY_CELLS` cells.
    threshold, threshold_small
        Confidence below which a cell is unknown (with / without the ratio).
    k
        Neighbours the model was calibrated with.
    report
        Reference AUROCs of the calibration (seen vs left-out types; right vs wrong among seen).
    """

    correctness: LogisticScore
    novelty: LogisticScore
    novelty_small: LogisticScore
    threshold: float
    threshold_small: float
    k: int
    report: dict[str, float] = field(default_factory=dict)

    def confidence(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Confidence (0-1, float32): ``P(right | seen) * P(seen)``.

        The novelty model with the density ratio is used when ``features`` has
        ``log_density_ratio``, the small-query one otherwise.
        """
        novelty = self.novelty if "log_density_ratio" in features else self.novelty_small
        return (self.correctness(features) * novelty(features)).astype(np.float32)

    @property
    def uses_agreement(self) -> bool:
        """Whether the correctness model needs the :data:`AGREEMENT_FEATURE`."""
        return AGREEMENT_FEATURE in self.correctness.features

    @property
    def uses_expression(self) -> bool:
        """Whether the novelty models need the expression features (:func:`expression_features`)."""
        return any(name in self.novelty.features for name in EXPRESSION_FEATURES)

    def threshold_for(self, features: dict[str, np.ndarray]) -> float:
        """The default unknown threshold matching the model :meth:`confidence` uses for ``features``."""
        return self.threshold if "log_density_ratio" in features else self.threshold_small

    def to_dict(self) -> dict:
        return {"correctness": self.correctness.to_dict(), "novelty": self.novelty.to_dict(),
                "novelty_small": self.novelty_small.to_dict(), "threshold": self.threshold,
                "threshold_small": self.threshold_small, "k": self.k,
                "report": {k: (float(v) if np.isfinite(v) else None) for k, v in self.report.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ConfidenceModel":
        try:
            return cls(LogisticScore.from_dict(d["correctness"]), LogisticScore.from_dict(d["novelty"]),
                       LogisticScore.from_dict(d["novelty_small"]), float(d["threshold"]),
                       float(d["threshold_small"]), int(d["k"]),
                       {k: float("nan") if v is None else float(v) for k, v in d.get("report", {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"The stored confidence model is incomplete ({exc}); re-run "
                             "`model.prepare_mapping(overwrite=True)` to calibrate it again.") from exc


@dataclass(frozen=True)
class CalibrationResult:
    """A fitted :class:`ConfidenceModel` and the calibration cells' confidences (for inspection and plots)."""

    model: ConfidenceModel
    seen_confidence: np.ndarray
    seen_correct: np.ndarray
    left_out_confidence: np.ndarray


# ---------------------------------------------------------------------------------------------- calibration
def _search_within(embedding: np.ndarray, rows: np.ndarray, query: np.ndarray, k: int) -> NeighborsResults:
    """Exact k-NN of ``query`` among ``embedding[rows]``, as row numbers of ``embedding``.

    A flat search over the subset keeps batched (BLAS or GPU) search; a search
    filtered by an id selector would scan query by query.
    """
    sims, idx = exact_search(query, embedding[rows], k)
    missing = idx < 0  # fewer than k cells: padded
    return NeighborsResults(np.where(missing, rows[0], rows[np.maximum(idx, 0)]).astype(np.int64),
                            np.where(missing, 0.0, sims).astype(np.float32))


def _youden_threshold(score: np.ndarray, positive: np.ndarray, weight: np.ndarray) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(positive, score, sample_weight=weight, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    # in the middle of the gap between the lowest admitted score and the next lower one
    lower = thr[best + 1] if best + 1 < len(thr) else thr[best]
    return float(np.clip(0.5 * (thr[best] + lower), 0.0, 1.0))


def _weighted_auroc(score: np.ndarray, positive: np.ndarray, weight: np.ndarray | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score, sample_weight=weight))


def calibrate_confidence(embedding: np.ndarray, codes: np.ndarray, n_classes: int, k: int = 5,
                         max_cells: int = 5_000, min_type_cells: int = 3, false_rejection_rate: float = 0.05,
                         seed: int = 0, pseudo_query: np.ndarray | None = None,
                         expression: np.ndarray | None = None, expression_vote: float = 0.0,
                         expression_veto: bool = False, scaled_expression: np.ndarray | None = None,
                         rare_label_cells: int = 0) -> CalibrationResult:
    """Fit the confidence model on a reference (see the module docstring).

    Parameters
    ----------
    embedding
        ``(n_ref, d)`` reference embedding.
    codes
        ``(n_ref,)`` label codes, ``-1`` for unlabeled cells (they vote for nothing and are never pseudo-queries).
    n_classes
        Number of label categories.
    k
        Neighbours per cell, as used for mapping.
    max_cells
        At most this many labeled cells form the pseudo-query (a seeded sample of
        up to half the labeled cells); every other cell is the pseudo-reference.
    min_type_cells
        Types with fewer pseudo-query cells are not left out.
    false_rejection_rate
        The default unknown threshold calls this fraction of the pseudo-query's
        right transfers unknown (its quantile of their confidences).
    seed
        Seed of the split and the subsamples.
    pseudo_query
        Reference rows to use as the pseudo-query (their labeled ones, at most
        ``max_cells``), e.g. cells whose labels were kept out of training; by
        default a random half of the labeled cells.
    expression
        ``(n_ref, c)`` the reference cells in its expression space (L2-normalized
        rows); the novelty models then use :data:`EXPRESSION_FEATURES` too.
    expression_vote
        Weight of the expression space's second opinion on contested votes
        (:func:`~scconcerto.tools.label_transfer.blend_votes`), as mapping will use it; ``0``: none.
    expression_veto
        With the second opinion, a unanimous expression-space vote overrules the winner
        (:func:`~scconcerto.tools.label_transfer.veto_rows`), as mapping will do.
    scaled_expression
        ``(n_ref, c)`` the reference cells in its scaled expression space
        (:mod:`scconcerto.data.scaled_space`): its vote is then the one blended in and the one
        rare labels claim by, the plain expression space's the one that vetoes, as at mapping.
    rare_label_cells
        With the veto, a label with fewer reference cells (the whole reference's, so the same
        labels claim as at mapping) holding at least half of the second vote wins
        (:func:`~scconcerto.tools.label_transfer.rare_label_rows`); ``0``: never.

    Returns
    -------
    CalibrationResult
    """
    emb = l2_normalize(embedding)
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape != (len(emb),):
        raise InputError(f"codes must hold one label code per reference cell ({len(emb)}), got {codes.shape}.")
    labeled = np.flatnonzero(codes >= 0)
    if len(np.unique(codes[labeled])) < 2 or labeled.size < 4 * max(k, 1):
        raise InputError(f"Calibrating the confidence needs at least two labeled cell types and {4 * max(k, 1)} "
                         f"labeled reference cells; found {len(np.unique(codes[labeled]))} types in "
                         f"{labeled.size} cells. Give a label key with several types.")
    rng = np.random.default_rng(seed)
    chosen = None if pseudo_query is None else np.intersect1d(np.asarray(pseudo_query, dtype=np.int64), labeled)
    if chosen is not None and len(np.unique(codes[chosen])) >= 2 and chosen.size >= 2 * max(k, 1):
        pseudo_query = np.sort(rng.choice(chosen, min(max_cells, chosen.size), replace=False))
    else:
        n_query = int(min(max_cells, labeled.size // 2))
        pseudo_query = np.sort(rng.choice(labeled, n_query, replace=False))
    is_pseudo_ref = np.ones(len(emb), dtype=bool)
    is_pseudo_ref[pseudo_query] = False
    pseudo_ref = np.flatnonzero(is_pseudo_ref)
    k_eff = int(min(k, len(pseudo_ref) - 1))
    q_codes = codes[pseudo_query]
    # the labels of the cells searched: rare labels are scaled by their pseudo-reference counts, as a
    # reference of that size would be at mapping
    voting = np.where(is_pseudo_ref, codes, -1)
    # the labels that may claim cells: rare in the whole reference, as at mapping
    claiming = rare_labels(label_counts(codes, n_classes), rare_label_cells) if rare_label_cells > 0 else None

    def transfer(nb: NeighborsResults, query_rows: np.ndarray, base_rows: np.ndarray
                 ) -> tuple[NeighborsResults, LabelTransfer, np.ndarray, np.ndarray | None]:
        """The vote on ``nb``, with the expression spaces' second opinion (blend, veto, rare labels' claim) as
        at mapping; overruled cells get their nearest cells of their new label as neighbours, as at mapping.
        Also returns the rows a rare label claimed and, with the veto, the :data:`AGREEMENT_FEATURE`."""
        tr = vote(nb, voting, n_classes)
        none = np.zeros(0, dtype=np.int64)
        if expression is None or expression_vote <= 0:
            return nb, tr, none, None
        contested = contested_rows(tr, expression_vote)
        asked = np.arange(len(query_rows)) if expression_veto else contested
        if not len(asked):
            return nb, tr, none, None
        second_space = expression if scaled_expression is None else scaled_expression
        second = vote(_search_within(second_space, base_rows, second_space[query_rows[asked]], k_eff), voting,
                      n_classes)
        veto_vote = None if scaled_expression is None or not expression_veto else vote(
            _search_within(expression, base_rows, expression[query_rows[asked]], k_eff), voting, n_classes)
        counts = label_counts(codes[base_rows], n_classes) if expression_veto else None
        tr, vetoed, claimed = second_opinion(tr, contested, asked, second, expression_vote, counts, k_eff,
                                             veto_vote=veto_vote, rare_labels=claiming)
        moved = np.union1d(vetoed, claimed)
        agreement = share_of(second, tr.codes) if expression_veto else None  # the veto searched every cell
        return with_neighbors_of_labels(nb, moved, emb[query_rows[moved]], emb[base_rows], codes[base_rows],
                                        tr.codes[moved], reference_rows=base_rows), tr, claimed, agreement

    def without(features: dict[str, np.ndarray], claimed: np.ndarray) -> dict[str, np.ndarray]:
        """``features`` without the claimed rows: a rare label's claim is a rule outside the neighbourhood
        the models describe (fitted on them, one right claim among 150 cells made the right-vs-wrong
        model accept far weaker neighbourhoods: PBMC without CD8 T, seen-vs-unseen AUROC 0.785 -> 0.737)."""
        return {name: np.delete(v, claimed) for name, v in features.items()}

    # seen: pseudo-query cells against the pseudo-reference
    nb = _search_within(emb, pseudo_ref, emb[pseudo_query], k_eff)
    nb, tr, claimed, agreement = transfer(nb, pseudo_query, pseudo_ref)
    seen = neighborhood_features(nb, tr, codes)
    if agreement is not None:
        seen[AGREEMENT_FEATURE] = agreement
    seen["log_density_ratio"] = density_ratio(emb[pseudo_query], emb[pseudo_ref], k=k, seed=seed)
    if expression is not None:
        seen.update(expression_features(expression[pseudo_query], expression[pseudo_ref], k=k, seed=seed))
    seen = without(seen, claimed)
    seen_correct = np.delete(tr.codes == q_codes, claimed)

    # unseen: each type's pseudo-query cells against the pseudo-reference without that type
    types = [t for t in np.unique(q_codes) if (q_codes == t).sum() >= min_type_cells
             and (codes[pseudo_ref] != t).sum() > k_eff]
    if not types:
        raise InputError("No cell type has enough labeled reference cells to calibrate the confidence.")
    parts: list[dict[str, np.ndarray]] = []
    for t in types:  # one search per type, never per cell
        rows = np.flatnonzero(q_codes == t)
        ref_without_t = pseudo_ref[codes[pseudo_ref] != t]
        nb_t = _search_within(emb, ref_without_t, emb[pseudo_query[rows]], k_eff)
        nb_t, tr_t, claimed, agreement_t = transfer(nb_t, pseudo_query[rows], ref_without_t)
        f = neighborhood_features(nb_t, tr_t, codes)
        if agreement_t is not None:  # with the veto, as for the seen cells
            f[AGREEMENT_FEATURE] = agreement_t
        f["log_density_ratio"] = density_ratio(emb[pseudo_query[rows]], emb[ref_without_t], emb[pseudo_query], k=k,
                                               seed=seed, query_rows_in_pool=rows)
        if expression is not None:
            f.update(expression_features(expression[pseudo_query[rows]], expression[ref_without_t], k=k, seed=seed,
                                         query_pool=expression[pseudo_query], query_rows_in_pool=rows))
        f = without(f, claimed)
        n_kept = len(rows) - len(claimed)
        f["weight"] = np.full(n_kept, 1.0 / (len(types) * max(n_kept, 1)))
        parts.append(f)
    if expression is not None:  # relative to the (pseudo-)query's typical cell, as at mapping
        centres = expression_centres(seen)
        seen = centred_on(seen, centres)
        parts = [centred_on(p, centres) for p in parts]
    unseen = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    w_unseen = unseen.pop("weight")
    n_seen = len(seen_correct)

    both = {name: np.concatenate([seen[name], unseen[name]]) for name in seen}
    is_seen = np.concatenate([np.ones(n_seen, dtype=bool), np.zeros(len(w_unseen), dtype=bool)])
    weight = np.concatenate([np.full(n_seen, 1.0 / n_seen), w_unseen])
    weight = weight / weight.mean()

    if seen_correct.all() or not seen_correct.any():  # nothing to learn: the share alone orders cells
        correctness = LogisticScore(("vote_share",), (4.0,), -2.0)
    else:
        agreeing = (AGREEMENT_FEATURE,) if AGREEMENT_FEATURE in seen else ()
        correctness = LogisticScore.fit(seen, CORRECTNESS_FEATURES + agreeing, seen_correct)
    extra = EXPRESSION_FEATURES if expression is not None else ()
    novelty = LogisticScore.fit(both, NOVELTY_FEATURES + extra, is_seen, weight)
    novelty_small = LogisticScore.fit(both, NOVELTY_SMALL_FEATURES, is_seen, weight)

    right = is_seen & np.concatenate([seen_correct, np.zeros(len(w_unseen), dtype=bool)])
    if not right.any():  # no right transfer to set the thresholds on (a tiny or unlabelable reference)
        right = is_seen
    conf = correctness(both) * novelty(both)
    conf_small = correctness(both) * novelty_small(both)
    report = {"auroc_seen_vs_left_out": _weighted_auroc(conf, is_seen, weight),
              "auroc_right_vs_wrong_seen": _weighted_auroc(conf[:n_seen], seen_correct),
              "seen_accuracy": float(seen_correct.mean()), "n_seen": float(n_seen),
              "n_left_out": float(len(w_unseen)), "left_out_types": float(len(types))}
    report["youden_threshold"] = _youden_threshold(conf, right, weight)
    model = ConfidenceModel(correctness=correctness, novelty=novelty, novelty_small=novelty_small,
                            threshold=float(np.quantile(conf[right], false_rejection_rate)),
                            threshold_small=float(np.quantile(conf_small[right], false_rejection_rate)), k=k,
                            report=report)
    return CalibrationResult(model=model, seen_confidence=conf[:n_seen].astype(np.float32),
                             seen_correct=seen_correct, left_out_confidence=conf[n_seen:].astype(np.float32))
