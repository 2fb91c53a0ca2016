"""One calibrated model per label key: the label posterior, the probability that the label is right, and the
probability that the cell is of a type the reference has.

Everything is fitted on the reference when it is built (:func:`fit_label_model`), on *held-out* reference
cells: the labeled cells kept out of the label-aware training positives (or a random quarter), each searched
among the other labeled cells. (Searching them among other sources only, as a query from a new source would
be, was measured and not kept: ``docs/mapping.md``.)

* **Posterior** ``p(label | cell)``: the calibrated similarity-weighted vote of :mod:`.posterior` among the
  cell's nearest reference cells in the embedding and, when the model keeps the reference's scaled expression
  space, pooled with the same vote in that space (the product of the two, calibrated:
  :func:`~.posterior.pool_posteriors`). A label needs the support of the cell's neighbours in both spaces;
  why pooled and not the embedding alone: ``benchmarks/POOLING.md``. The fits read the held-out labels with
  Platt's correction (:func:`~.posterior.platt_smoothing`): a few held-out cells all voted right make a vote
  sure, not certain.
* **Right** ``P(right | seen type)``: a logistic model of the posterior's log odds and, when the model keeps an
  expression space, of the share of the cell's nearest reference cells *in expression* that carry the label
  (:func:`~.scores.agreement`): a wrong label often has a clean neighbourhood in the label-shaped embedding but
  not in expression.
* **Seen** ``P(seen type)``: a logistic model of the posterior's log odds, the best and mean similarity of the
  voters, the density ratio (:func:`~.scores.density_ratio`) and, with an expression space, the similarity and
  density ratio read there, each similarity relative to the query's median cell (per query source): a query
  from a new source is farther from the reference as a whole, which says nothing of its cells' types. Fitted
  by leaving one type out at a time: held-out cells of type ``t`` searched among reference cells without ``t``
  are the unseen examples (every type weighs the same, and unseen as much as seen). A query under
  :data:`MIN_QUERY_CELLS` cells has no median cell to speak of: its model reads the log odds and the absolute
  similarities only. The price of reading a query relative to itself: a query made only of types the reference
  lacks looks as typical as any; its posterior's log odds are then the only sign.

Both logistic models keep their coefficients non-negative (:meth:`~.scores.LogisticScore.fit`): a surer label,
closer neighbours or more agreement never lower a probability.

The novelty model is fitted with seen and left-out types weighing the same, i.e. at even odds of a new type.
A query cell is read at the prior probability :data:`SEEN_PRIOR` of a seen type (even odds by default; a user
who knows what share of a query's cells are of seen types may give it): each odds of the fitted ``P(seen)`` is
multiplied by ``prior / (1 - prior)`` (:func:`at_seen_prior`), and so is the threshold's, so that the prior
moves the probabilities but flags the same cells unknown.

A cell's ``confidence`` is ``P(seen) * P(right | seen)``; it is *unknown* when ``P(seen)`` falls below the
value that :data:`FALSE_REJECTION` of the held-out cells fall below.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .._errors import InputError
from ..search.neighbors import exact_search, l2_normalize
from .posterior import VotePosterior, fit_pool_power, label_frequencies, platt_smoothing, pool_posteriors
from .scores import LogisticScore, agreement, density_ratio, neighbourhood_features, support_log_odds

__all__ = ["DEFAULT_K", "FALSE_REJECTION", "LabelModel", "MIN_QUERY_CELLS", "SEEN_PRIOR", "at_seen_prior",
           "fit_label_model", "neighbour_labels", "query_features"]

#: Neighbours that vote (the paper's 5; the alternatives measured in ``benchmarks/DECISION.md``).
DEFAULT_K = 5
#: Share of held-out reference cells of seen types that the default unknown threshold flags.
FALSE_REJECTION = 0.05
#: Prior probability that a query cell is of a type the reference has (:func:`at_seen_prior`): even odds, the
#: odds the novelty model is fitted at; chosen on the development cases of ``benchmarks/CONFIDENCE.md``.
SEEN_PRIOR = 0.5
#: Below this many cells a query has no neighbourhood of its own: the density ratios are not used.
MIN_QUERY_CELLS = 30
#: At most this many held-out cells calibrate a label key (a seeded sample above it).
CALIBRATION_CELLS = 5_000
#: Types with fewer held-out cells are not left out one at a time for the novelty model.
MIN_LEFT_OUT_CELLS = 3

NEIGHBOURHOOD = ("log_odds", "top_similarity", "mean_similarity")
#: Read relative to the query's median cell (``relative_`` + name): a query from a new source is farther from
#: the reference as a whole, which says nothing of its cells' types.
SHIFTED = ("top_similarity", "mean_similarity", "log_density_ratio", "expression_similarity",
           "log_expression_density_ratio")
RELATIVE = tuple(f"relative_{name}" for name in SHIFTED)
AGREEMENT = "expression_agreement"
#: Log odds of the label under the embedding's own vote (before pooling with the expression space's).
EMBEDDING_SUPPORT = "embedding_log_odds"
#: What ``P(right | seen)`` reads when the model keeps an expression space (else the log odds alone); chosen in
#: ``benchmarks/CONFIDENCE.md``, where adding :data:`EMBEDDING_SUPPORT` was measured and not kept.
RIGHT_FEATURES = ("log_odds", AGREEMENT)
#: Nearest reference cells in the expression space whose labels the agreement counts.
AGREEMENT_K = 20


@dataclass(frozen=True)
class LabelModel:
    """The calibrated decision of one label key (see the module docstring).

    Attributes
    ----------
    classes
        Label names, in code order.
    posterior
        The calibrated vote in the embedding.
    right
        ``P(right | seen)``; ``None``: the posterior's best probability.
    seen, seen_small
        ``P(seen type)`` with and without the density ratios.
    threshold, threshold_small
        ``P(seen)`` below which a cell is unknown (with / without the ratios).
    expression_posterior
        The calibrated vote in the scaled expression space, pooled with ``posterior``; ``None``: the
        embedding's vote alone.
    tau
        Power of the pooled product.
    report
        How the held-out cells fared (accuracy, AUROCs, sizes).
    """

    classes: tuple[str, ...]
    posterior: VotePosterior
    right: LogisticScore | None
    seen: LogisticScore
    seen_small: LogisticScore
    threshold: float
    threshold_small: float
    expression_posterior: VotePosterior | None = None
    tau: float = 1.0
    report: dict[str, float] = field(default_factory=dict)

    @property
    def uses_expression(self) -> bool:
        """Whether the model reads the expression space (agreement or expression novelty features)."""
        return self.expression_posterior is not None or any(name in self.seen.features for name in RELATIVE[3:]) or (
            self.right is not None and AGREEMENT in self.right.features)

    @property
    def reads_embedding_support(self) -> bool:
        """Whether ``P(right | seen)`` reads the embedding's own vote (:data:`EMBEDDING_SUPPORT`), so that
        :func:`query_features` needs ``embedding_posterior``."""
        return self.right is not None and EMBEDDING_SUPPORT in self.right.features

    def label_posterior(self, similarities: np.ndarray, labels: np.ndarray,
                        expression: tuple[np.ndarray, np.ndarray] | None = None, k: int | None = None) -> np.ndarray:
        """``(n, n_classes)``: the posterior from each cell's nearest reference cells in the embedding
        (``similarities``, label codes ``labels``, best first) and, when the model pools, in the expression
        space (``expression``: the same two arrays there).

        ``k`` replaces the fitted number of voters (in both spaces; in the expression space at most the
        neighbours given there).
        """
        return _pooled_posterior(self.posterior, self.expression_posterior, self.tau, similarities, labels,
                                 expression, k)

    def decide(self, features: dict[str, np.ndarray], posterior: np.ndarray, seen_prior: float = SEEN_PRIOR
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """``P(right | seen)``, ``P(seen)``, the confidence and the default threshold of each cell.

        ``features`` come from :func:`query_features`; without the relative features (a query too small to
        have a median cell) the small-query model is used. ``seen_prior``: the prior probability of a seen
        type (:func:`at_seen_prior`; ``0.5``: the odds the novelty model was fitted at).
        """
        p_right = posterior.max(axis=1) if self.right is None else self.right(features)
        with_ratio = "relative_log_density_ratio" in features
        p_seen = at_seen_prior((self.seen if with_ratio else self.seen_small)(features), seen_prior)
        threshold = float(at_seen_prior(self.threshold if with_ratio else self.threshold_small, seen_prior))
        return p_right, p_seen, p_right * p_seen, threshold

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "posterior": self.posterior.to_dict(),
                "expression_posterior": None if self.expression_posterior is None else self.expression_posterior.to_dict(),
                "tau": self.tau,
                "right": None if self.right is None else self.right.to_dict(), "seen": self.seen.to_dict(),
                "seen_small": self.seen_small.to_dict(), "threshold": self.threshold,
                "threshold_small": self.threshold_small,
                "report": {k: (float(v) if np.isfinite(v) else None) for k, v in self.report.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelModel":
        try:
            classes = tuple(str(c) for c in d["classes"])
            posterior = VotePosterior.from_dict(d["posterior"])
            if len(classes) != posterior.n_classes:
                raise ValueError(f"{len(classes)} classes but a prior over {posterior.n_classes}")
            # a model folder written before the votes were pooled (2026-12-06) decides as it was fitted: the
            # embedding's vote alone
            expression_posterior = None if d.get("expression_posterior") is None else VotePosterior.from_dict(
                d["expression_posterior"])
            if expression_posterior is not None and expression_posterior.n_classes != len(classes):
                raise ValueError(f"{len(classes)} classes but an expression prior over {expression_posterior.n_classes}")
            tau = float(d.get("tau", 1.0))
            if not np.isfinite(tau) or tau <= 0:
                raise ValueError(f"pooling power {tau} is not positive")
            model = cls(classes=classes, posterior=posterior, expression_posterior=expression_posterior, tau=tau,
                        right=None if d["right"] is None else LogisticScore.from_dict(d["right"]),
                        seen=LogisticScore.from_dict(d["seen"]), seen_small=LogisticScore.from_dict(d["seen_small"]),
                        threshold=float(d["threshold"]), threshold_small=float(d["threshold_small"]),
                        report={k: float("nan") if v is None else float(v) for k, v in d.get("report", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"The model's stored label decision is damaged ({exc}); rebuild the model, or "
                             "re-run `model.prepare_mapping(overwrite=True)` with the reference.") from exc
        if not (0.0 <= model.threshold <= 1.0 and 0.0 <= model.threshold_small <= 1.0):
            raise InputError("The model's stored unknown thresholds are not probabilities; rebuild the model.")
        return model


def at_seen_prior(p_seen: np.ndarray | float, prior: float) -> np.ndarray:
    """``P(seen)`` fitted at even odds of a seen and a new type, read at the prior probability ``prior`` of a
    seen type (Bayes' rule: each odds multiplied by ``prior / (1 - prior)``; order kept)."""
    if not 0.0 < float(prior) < 1.0:
        raise InputError(f"The prior share of cells of known types must lie strictly between 0 and 1, got {prior}.")
    p = np.clip(np.asarray(p_seen, dtype=np.float64), 0.0, 1.0)
    if float(prior) == 0.5:  # even odds: the fitted probabilities themselves
        return p
    ratio = float(prior) / (1.0 - float(prior))
    return ratio * p / (ratio * p + (1.0 - p))  # the denominator is positive on [0, 1]: 0 and 1 stay


def _pooled_posterior(vote: VotePosterior, expression_vote: VotePosterior | None, tau: float,
                      similarities: np.ndarray, labels: np.ndarray,
                      expression: tuple[np.ndarray, np.ndarray] | None, k: int | None = None) -> np.ndarray:
    """See :meth:`LabelModel.label_posterior`."""
    vote = vote if k is None else replace(vote, k=int(k))
    p = vote.posterior(similarities, labels)
    if expression_vote is None:
        return p
    if expression is None:
        raise InputError("This label decision pools the votes in the embedding and in the expression space; "
                         "the query's neighbours in the expression space are missing.")
    k_expr = min(expression_vote.k if k is None else int(k), expression[0].shape[1])
    return pool_posteriors([p, replace(expression_vote, k=k_expr).posterior(*expression)], tau)


# ------------------------------------------------------------------------------------------------ searching
def _held_out_search(emb: np.ndarray, held: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each held-out cell's ``k`` nearest ``pool`` cells as ``(similarities, pool rows)``; fewer than ``k`` are
    padded with label-less rows (-1)."""
    sims = np.full((len(held), k), -1.0, dtype=np.float32)
    rows = np.full((len(held), k), -1, dtype=np.int64)
    s, i = exact_search(emb[held], emb[pool], min(k, len(pool)))
    sims[:, :s.shape[1]] = s
    rows[:, :i.shape[1]] = np.where(i >= 0, pool[np.maximum(i, 0)], -1)
    return sims, rows


def neighbour_labels(rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The label codes of neighbour ``rows`` (``-1``, a missing neighbour, stays ``-1``: unlabeled)."""
    return np.where(rows >= 0, codes[np.maximum(rows, 0)], -1)


def _held_out_density(emb: np.ndarray, held: np.ndarray, cells: np.ndarray, pool: np.ndarray, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Density ratio of the held-out ``cells`` (rows of ``held``) against ``pool``, the held-out cells standing
    for the query."""
    return density_ratio(emb[held[cells]], emb[pool], emb[held], query_rows_in_pool=cells, seed=seed)


# ------------------------------------------------------------------------------------------------ fitting
def fit_label_model(embedding: np.ndarray, codes: np.ndarray, classes: list[str], held_out: np.ndarray | None = None,
                    expression: np.ndarray | None = None, k: int = DEFAULT_K, max_cells: int = CALIBRATION_CELLS, seed: int = 0) -> LabelModel:
    """Fit the label decision of one key on the reference (see the module docstring).

    Parameters
    ----------
    embedding
        ``(n_ref, d)`` reference embedding.
    codes
        ``(n_ref,)`` label codes (``-1``: unlabeled).
    classes
        Label names (``len(classes)`` codes).
    held_out
        Reference rows kept out of label-aware training (their labeled ones calibrate); default: a random
        quarter of the labeled cells.
    expression
        ``(n_ref, c)`` the reference cells in an expression space (L2-normalized rows), or ``None``.
    k
        Neighbours that vote.
    max_cells
        At most this many held-out cells (seeded sample).
    seed
        Seed of the samples.
    """
    emb = l2_normalize(embedding)
    codes = np.asarray(codes, dtype=np.int64)
    n_classes = len(classes)
    if codes.shape != (len(emb),):
        raise InputError(f"codes must hold one label code per reference cell ({len(emb)}).")
    labeled = np.flatnonzero(codes >= 0)
    if len(np.unique(codes[labeled])) < 2 or len(labeled) < 2 * k:
        raise InputError(f"A label decision needs at least two labeled cell types and {2 * k} labeled "
                         f"cells; found {len(np.unique(codes[labeled]))} types in {len(labeled)} cells.")
    rng = np.random.default_rng(seed)
    held = np.intersect1d(np.asarray(held_out, dtype=np.int64), labeled) if held_out is not None else np.zeros(0, int)
    if len(held) < 2 * k or len(np.unique(codes[held])) < 2:
        held = rng.choice(labeled, max(len(labeled) // 4, 2), replace=False)
    if len(held) > max_cells:
        held = rng.choice(held, max_cells, replace=False)
    held = np.sort(held)
    pool = np.setdiff1d(labeled, held)
    prior = label_frequencies(codes, n_classes)

    sims, rows = _held_out_search(emb, held, pool, k)
    labels = neighbour_labels(rows, codes)
    # a held-out cell whose type is absent from the cells it was searched among cannot be labelled: left out
    fit_rows = np.flatnonzero(np.isin(codes[held], codes[pool]))  # a type with no other cell cannot be voted
    truth = codes[held[fit_rows]]
    smoothing = platt_smoothing(len(truth))
    posterior = VotePosterior.fit(sims[fit_rows], labels[fit_rows], truth, prior, k, smoothing=smoothing)
    post = posterior.posterior(sims, labels)
    embedding_post = post
    expr = None if expression is None else l2_normalize(expression)
    expression_posterior, tau = None, 1.0
    if expr is not None:
        expr_sims, expr_rows = _held_out_search(expr, held, pool, AGREEMENT_K)
        expr_labels = neighbour_labels(expr_rows, codes)
        expression_posterior = VotePosterior.fit(expr_sims[fit_rows], expr_labels[fit_rows], truth, prior, k,
                                                 smoothing=smoothing)
        expr_post = expression_posterior.posterior(expr_sims, expr_labels)
        tau = fit_pool_power([post[fit_rows], expr_post[fit_rows]], truth, smoothing=smoothing)
        post = pool_posteriors([post, expr_post], tau)
    right = post.argmax(axis=1) == codes[held]

    seen = neighbourhood_features(sims, post)
    seen[EMBEDDING_SUPPORT] = support_log_odds(embedding_post, post.argmax(axis=1))
    seen["log_density_ratio"], _ = _held_out_density(emb, held, np.arange(len(held)), pool, seed)
    if expr is not None:
        seen[AGREEMENT] = agreement(expr_labels, post.argmax(axis=1))
        seen["log_expression_density_ratio"], seen["expression_similarity"] = _held_out_density(
            expr, held, np.arange(len(held)), pool, seed)

    # unseen examples: each type's held-out cells searched among the reference without that type
    parts = []
    types = [t for t in np.unique(codes[held]) if (codes[held] == t).sum() >= MIN_LEFT_OUT_CELLS
             and (codes[pool] != t).sum() > k]
    for t in types:
        mine = np.flatnonzero(codes[held] == t)
        without = pool[codes[pool] != t]
        s_t, r_t = _held_out_search(emb, held[mine], without, k)
        e_t = None
        if expr is not None:
            es_t, er_t = _held_out_search(expr, held[mine], without, k)
            e_t = (es_t, neighbour_labels(er_t, codes))
        p_t = _pooled_posterior(posterior, expression_posterior, tau, s_t, neighbour_labels(r_t, codes), e_t)
        f = neighbourhood_features(s_t, p_t)
        f["log_density_ratio"], _ = _held_out_density(emb, held, mine, without, seed)
        if expr is not None:
            f["log_expression_density_ratio"], f["expression_similarity"] = _held_out_density(
                expr, held, mine, without, seed)
        f["weight"] = np.full(len(mine), 1.0 / (len(types) * len(mine)))
        parts.append(f)
    if not parts:
        raise InputError("No cell type has enough labeled reference cells to fit the unknown-type model "
                         f"(at least {MIN_LEFT_OUT_CELLS} held-out cells of a type are needed).")
    unseen = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    w_unseen = unseen.pop("weight")
    n_seen = len(held)
    both = {name: np.concatenate([seen[name], unseen[name]]) for name in unseen}
    is_seen = np.r_[np.ones(n_seen, dtype=bool), np.zeros(len(w_unseen), dtype=bool)]
    # relative to the held-out cells' median, as a query's features to its own median cell
    relative = _relative_to(both, np.zeros(len(is_seen), dtype=np.int64), is_seen)
    weight = np.r_[np.full(n_seen, 1.0 / n_seen), w_unseen]
    weight /= weight.mean()

    names = ("log_odds",) + RELATIVE[:3] + (RELATIVE[3:] if expr is not None else ())
    seen_model = LogisticScore.fit(relative, names, is_seen, weight)
    seen_small = LogisticScore.fit(both, NEIGHBOURHOOD, is_seen, weight)
    right_model = None
    if 0 < right[fit_rows].sum() < len(fit_rows):
        right_names = RIGHT_FEATURES if expr is not None else ("log_odds",)
        right_model = LogisticScore.fit({n: seen[n][fit_rows] for n in right_names}, right_names, right[fit_rows])
    p_seen, p_seen_small = seen_model(relative)[:n_seen], seen_small(both)[:n_seen]
    p_right = post.max(axis=1) if right_model is None else right_model(seen)
    report = {"held_out_cells": float(n_seen), "held_out_accuracy": float(right[fit_rows].mean()),
              "alpha": posterior.alpha, "gamma": posterior.gamma, "tau": tau, "left_out_types": float(len(types)),
              "auroc_seen_vs_left_out": _auroc(seen_model(relative), is_seen, weight),
              "auroc_right_vs_wrong": _auroc(p_right[fit_rows], right[fit_rows])}
    return LabelModel(classes=tuple(str(c) for c in classes), posterior=posterior, right=right_model,
                      seen=seen_model, seen_small=seen_small,
                      threshold=float(np.quantile(p_seen, FALSE_REJECTION)),
                      threshold_small=float(np.quantile(p_seen_small, FALSE_REJECTION)),
                      expression_posterior=expression_posterior, tau=tau, report=report)


def _relative_to(features: dict[str, np.ndarray], groups: np.ndarray, reference_rows: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """``features`` plus ``relative_<name>`` for the :data:`SHIFTED` ones: minus the median of the
    ``reference_rows`` of the same group (e.g. a query source's cells)."""
    out = dict(features)
    for name in SHIFTED:
        if name not in features:
            continue
        values = np.asarray(features[name], dtype=np.float64)
        relative = np.empty_like(values)
        for g in np.unique(groups):
            mine = groups == g
            base = values[mine & reference_rows]
            relative[mine] = values[mine] - (np.median(base) if len(base) else np.median(values[mine]))
        out[f"relative_{name}"] = relative
    return out


def _auroc(score: np.ndarray, positive: np.ndarray, weight: np.ndarray | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score, sample_weight=weight))


# ------------------------------------------------------------------------------------------------ querying
def query_features(similarities: np.ndarray, posterior: np.ndarray, query: np.ndarray, reference: np.ndarray,
                   expression: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                   groups: np.ndarray | None = None, embedding_posterior: np.ndarray | None = None,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """The features a :class:`LabelModel` reads of query cells.

    Parameters
    ----------
    similarities
        ``(n, k)`` similarities of the neighbours the posterior was voted by.
    posterior
        ``(n, n_classes)`` the cells' posterior.
    query, reference
        The query and reference cells in the embedding (for the density ratio).
    expression
        ``(query cells, reference cells, labels of each query cell's nearest reference cells)`` in the
        expression space, or ``None``.
    groups
        Source of each query cell: the relative features are taken against each source's median cell
        (a source under :data:`MIN_QUERY_CELLS` cells against the whole query's).
    embedding_posterior
        ``(n, n_classes)`` the embedding's own calibrated vote (:attr:`LabelModel.posterior`), when
        ``posterior`` pools it with the expression space's; default: ``posterior`` itself.
    seed
        Seed of the density ratios' samples.
    """
    features = neighbourhood_features(similarities, posterior)
    features[EMBEDDING_SUPPORT] = support_log_odds(posterior if embedding_posterior is None else embedding_posterior,
                                                   posterior.argmax(axis=1))
    if expression is not None:
        features[AGREEMENT] = agreement(expression[2], posterior.argmax(axis=1))
    if len(query) < MIN_QUERY_CELLS:
        return features
    features["log_density_ratio"], _ = density_ratio(query, reference, seed=seed)
    if expression is not None:
        features["log_expression_density_ratio"], features["expression_similarity"] = density_ratio(
            expression[0], expression[1], seed=seed)
    groups = np.zeros(len(query), dtype=np.int64) if groups is None else np.asarray(groups)
    sizes = dict(zip(*np.unique(groups, return_counts=True)))
    groups = np.where([sizes[g] >= MIN_QUERY_CELLS for g in groups], groups, -1)  # small sources: one group
    if (groups == -1).any() and (groups != -1).any():
        groups = np.where(groups == -1, groups.max() + 1, groups)
    return _relative_to(features, groups, np.ones(len(query), dtype=bool))
