"""One calibrated model per label key: the label posterior, the probability that the label is right, and the
probability that the cell is of a type the reference has.

Everything is fitted on the reference when it is built (:func:`fit_label_model`), on *held-out* reference
cells: the labeled cells kept out of the label-aware training positives (or a random quarter), each searched
among the other labeled cells **of other sources** when the reference has several (as a query from a new
source will be), else among all the others.

* **Posterior** ``p(label | cell)``: the calibrated similarity-weighted vote of :mod:`.posterior` (its most
  probable label is the plain vote's).
* **Right** ``P(right | seen type)``: a logistic model of the posterior's log odds, the best and mean similarity
  of the voters and, when the model keeps an expression space, of the share of the cell's nearest reference cells *in expression* that carry the label
  (:func:`~.scores.agreement`): a wrong label often has a clean neighbourhood in the label-shaped embedding but
  not in expression.
* **Seen** ``P(seen type)``: a logistic model of the neighbourhood (log odds, best and mean similarity), the
  density ratio (:func:`~.scores.density_ratio`) and, with an expression space, the same two read there
  (relative to the query's median cell, since that space keeps batch effects). Fitted by leaving one type
  out at a time: held-out cells of type ``t`` searched among reference cells without ``t`` are the unseen
  examples (every type weighs the same, and unseen as much as seen). A query under
  :data:`MIN_QUERY_CELLS` cells has no neighbourhood of its own: its model reads no density ratio.

A cell's ``confidence`` is ``P(seen) * P(right | seen)``; it is *unknown* when ``P(seen)`` falls below the
value that :data:`FALSE_REJECTION` of the held-out cells fall below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._errors import InputError
from ..tools.neighbors import exact_search, l2_normalize
from .posterior import VotePosterior, label_frequencies
from .scores import LogisticScore, agreement, density_ratio, neighbourhood_features

__all__ = ["DEFAULT_K", "FALSE_REJECTION", "LabelModel", "MIN_QUERY_CELLS", "fit_label_model", "query_features"]

#: Neighbours that vote (the paper's 5; the alternatives measured in ``benchmarks/DECISION.md``).
DEFAULT_K = 5
#: Share of held-out reference cells of seen types that the default unknown threshold flags.
FALSE_REJECTION = 0.05
#: Below this many cells a query has no neighbourhood of its own: the density ratios are not used.
MIN_QUERY_CELLS = 30
#: At most this many held-out cells calibrate a label key (a seeded sample above it).
CALIBRATION_CELLS = 5_000
#: Types with fewer held-out cells are not left out one at a time for the novelty model.
MIN_LEFT_OUT_CELLS = 3

NEIGHBOURHOOD = ("log_odds", "top_similarity", "mean_similarity")
DENSITY = ("log_density_ratio",)
EXPRESSION = ("expression_similarity", "log_expression_density_ratio")
AGREEMENT = "expression_agreement"


@dataclass(frozen=True)
class LabelModel:
    """The calibrated decision of one label key (see the module docstring).

    Attributes
    ----------
    classes
        Label names, in code order.
    posterior
        The kernel vote.
    right
        ``P(right | seen)``; ``None``: the posterior's best probability.
    seen, seen_small
        ``P(seen type)`` with and without the density ratios.
    threshold, threshold_small
        ``P(seen)`` below which a cell is unknown (with / without the ratios).
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
    report: dict[str, float] = field(default_factory=dict)

    @property
    def uses_expression(self) -> bool:
        """Whether the model reads the expression space (agreement or expression novelty features)."""
        return any(name in self.seen.features for name in EXPRESSION) or (
            self.right is not None and AGREEMENT in self.right.features)

    def decide(self, features: dict[str, np.ndarray], posterior: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """``P(right | seen)``, ``P(seen)``, the confidence and the default threshold of each cell.

        ``features`` hold the novelty features; without ``log_density_ratio`` the small-query model is used.
        """
        p_right = posterior.max(axis=1) if self.right is None else self.right(features)
        with_ratio = "log_density_ratio" in features
        p_seen = (self.seen if with_ratio else self.seen_small)(features)
        threshold = self.threshold if with_ratio else self.threshold_small
        return p_right, p_seen, p_right * p_seen, threshold

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "posterior": self.posterior.to_dict(),
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
            model = cls(classes=classes, posterior=posterior,
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


# ------------------------------------------------------------------------------------------------ searching
def _held_out_search(emb: np.ndarray, codes: np.ndarray, domains: np.ndarray, held: np.ndarray,
                     pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each held-out cell's ``k`` nearest ``pool`` cells (of other sources when the pool has several),
    as ``(similarities, pool rows)``; fewer than ``k`` candidates are padded with label-less rows (-1)."""
    sims = np.full((len(held), k), -1.0, dtype=np.float32)
    rows = np.full((len(held), k), -1, dtype=np.int64)
    groups = [(np.arange(len(held)), pool)]
    if len(np.unique(domains[pool])) > 1:
        groups = [(np.flatnonzero(domains[held] == d), pool[domains[pool] != d]) for d in np.unique(domains[held])]
    for which, base in groups:
        if not len(which) or not len(base):
            continue
        s, i = exact_search(emb[held[which]], emb[base], min(k, len(base)))
        sims[which, :s.shape[1]] = s
        rows[which, :i.shape[1]] = np.where(i >= 0, base[np.maximum(i, 0)], -1)
    return sims, rows


def _labels_of(rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, codes[np.maximum(rows, 0)], -1)


def _source_density(emb: np.ndarray, held: np.ndarray, cells: np.ndarray, base: np.ndarray, domains: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Density ratio of held-out ``cells`` (rows of ``held``) against ``base``: each source's cells against the
    base cells of other sources (when there are several) and the held-out cells of their own source."""
    ratio = np.zeros(len(cells))
    similarity = np.zeros(len(cells))
    several = len(np.unique(domains[base])) > 1
    for d in np.unique(domains[held[cells]]):
        mine = np.flatnonzero(domains[held[cells]] == d)
        own_source = np.flatnonzero(domains[held] == d)
        against = base[domains[base] != d] if several else base
        if not len(against):
            continue
        position = np.searchsorted(own_source, cells[mine])
        r, s = density_ratio(emb[held[cells[mine]]], emb[against], emb[held[own_source]],
                             query_rows_in_pool=position, seed=seed)
        ratio[mine], similarity[mine] = r, s
    return ratio, similarity


# ------------------------------------------------------------------------------------------------ fitting
def fit_label_model(embedding: np.ndarray, codes: np.ndarray, classes: list[str], domains: np.ndarray,
                    held_out: np.ndarray | None = None, expression: np.ndarray | None = None,
                    k: int = DEFAULT_K, max_cells: int = CALIBRATION_CELLS, seed: int = 0) -> LabelModel:
    """Fit the label decision of one key on the reference (see the module docstring).

    Parameters
    ----------
    embedding
        ``(n_ref, d)`` reference embedding.
    codes
        ``(n_ref,)`` label codes (``-1``: unlabeled).
    classes
        Label names (``len(classes)`` codes).
    domains
        ``(n_ref,)`` source of each reference cell.
    held_out
        Reference rows kept out of label-aware training (their labeled ones calibrate); default: a random
        quarter of the labeled cells.
    expression
        ``(n_ref, c)`` the reference cells in an expression space (L2-normalized rows), or ``None``.
    k
        Candidates of the kernel vote.
    max_cells
        At most this many held-out cells (seeded sample).
    seed
        Seed of the samples.
    """
    emb = l2_normalize(embedding)
    codes = np.asarray(codes, dtype=np.int64)
    domains = np.asarray(domains)
    n_classes = len(classes)
    if codes.shape != (len(emb),) or domains.shape != (len(emb),):
        raise InputError(f"codes and domains must hold one entry per reference cell ({len(emb)}).")
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

    sims, rows = _held_out_search(emb, codes, domains, held, pool, k)
    labels = _labels_of(rows, codes)
    # a held-out cell whose type is absent from the cells it was searched among cannot be labelled: left out
    fit_rows = np.flatnonzero(_type_in_pool(codes, domains, held, pool))
    if not len(fit_rows):
        raise InputError("No held-out reference cell has its type among the reference cells of other sources; "
                         "the label decision cannot be calibrated.")
    posterior = VotePosterior.fit(sims[fit_rows], labels[fit_rows], codes[held[fit_rows]], prior, k)
    post = posterior.posterior(sims, labels)
    right = post.argmax(axis=1) == codes[held]

    seen = neighbourhood_features(sims, post)
    seen["log_density_ratio"], _ = _source_density(emb, held, np.arange(len(held)), pool, domains, seed)
    expr = None if expression is None else l2_normalize(expression)
    if expr is not None:
        _, expr_rows = _held_out_search(expr, codes, domains, held, pool, k)
        seen[AGREEMENT] = agreement(_labels_of(expr_rows, codes), post.argmax(axis=1))
        seen["log_expression_density_ratio"], seen["expression_similarity"] = _source_density(
            expr, held, np.arange(len(held)), pool, domains, seed)

    # unseen examples: each type's held-out cells searched among the reference without that type
    parts = []
    types = [t for t in np.unique(codes[held]) if (codes[held] == t).sum() >= MIN_LEFT_OUT_CELLS
             and (codes[pool] != t).sum() > k]
    for t in types:
        mine = np.flatnonzero(codes[held] == t)
        without = pool[codes[pool] != t]
        s_t, r_t = _held_out_search(emb, codes, domains, held[mine], without, k)
        p_t = posterior.posterior(s_t, _labels_of(r_t, codes))
        f = neighbourhood_features(s_t, p_t)
        f["log_density_ratio"], _ = _source_density(emb, held, mine, without, domains, seed)
        if expr is not None:
            f["log_expression_density_ratio"], f["expression_similarity"] = _source_density(
                expr, held, mine, without, domains, seed)
        f["weight"] = np.full(len(mine), 1.0 / (len(types) * len(mine)))
        parts.append(f)
    if not parts:
        raise InputError("No cell type has enough labeled reference cells to fit the unknown-type model "
                         f"(at least {MIN_LEFT_OUT_CELLS} held-out cells of a type are needed).")
    if expr is not None:  # relative to the held-out cells' median, as a query's to its own
        centres = {name: float(np.median(seen[name])) for name in EXPRESSION}
        for f in [seen, *parts]:
            for name in EXPRESSION:
                f[name] = f[name] - centres[name]
    unseen = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    w_unseen = unseen.pop("weight")
    n_seen = len(held)
    both = {name: np.concatenate([seen[name], unseen[name]]) for name in unseen}
    is_seen = np.r_[np.ones(n_seen, dtype=bool), np.zeros(len(w_unseen), dtype=bool)]
    weight = np.r_[np.full(n_seen, 1.0 / n_seen), w_unseen]
    weight /= weight.mean()

    extra = EXPRESSION if expr is not None else ()
    seen_model = LogisticScore.fit(both, NEIGHBOURHOOD + DENSITY + extra, is_seen, weight)
    seen_small = LogisticScore.fit(both, NEIGHBOURHOOD, is_seen, weight)
    right_model = None
    if 0 < right[fit_rows].sum() < len(fit_rows):
        names = NEIGHBOURHOOD + ((AGREEMENT,) if expr is not None else ())
        right_model = LogisticScore.fit({n: seen[n][fit_rows] for n in names}, names, right[fit_rows])
    p_seen, p_seen_small = seen_model(both)[:n_seen], seen_small(both)[:n_seen]
    p_right = post.max(axis=1) if right_model is None else right_model(seen)
    report = {"held_out_cells": float(n_seen), "held_out_accuracy": float(right[fit_rows].mean()),
              "alpha": posterior.alpha, "gamma": posterior.gamma, "left_out_types": float(len(types)),
              "auroc_seen_vs_left_out": _auroc(np.r_[p_seen, seen_model(both)[n_seen:]], is_seen, weight),
              "auroc_right_vs_wrong": _auroc(p_right[fit_rows], right[fit_rows])}
    return LabelModel(classes=tuple(str(c) for c in classes), posterior=posterior, right=right_model,
                      seen=seen_model, seen_small=seen_small,
                      threshold=float(np.quantile(p_seen, FALSE_REJECTION)),
                      threshold_small=float(np.quantile(p_seen_small, FALSE_REJECTION)), report=report)


def _type_in_pool(codes: np.ndarray, domains: np.ndarray, held: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Whether each held-out cell's type exists among the pool cells it is searched against."""
    several = len(np.unique(domains[pool])) > 1
    out = np.zeros(len(held), dtype=bool)
    for d in np.unique(domains[held]):
        mine = domains[held] == d
        against = pool[domains[pool] != d] if several else pool
        out[mine] = np.isin(codes[held[mine]], codes[against])
    return out


def _auroc(score: np.ndarray, positive: np.ndarray, weight: np.ndarray | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score, sample_weight=weight))


# ------------------------------------------------------------------------------------------------ querying
def query_features(similarities: np.ndarray, posterior: np.ndarray, query: np.ndarray, reference: np.ndarray,
                   expression: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """The features a :class:`LabelModel` reads of query cells.

    Parameters
    ----------
    similarities
        ``(n, k)`` similarities of the candidates the posterior was voted by.
    posterior
        ``(n, n_classes)`` the cells' posterior.
    query, reference
        The query and reference cells in the embedding (for the density ratio).
    expression
        ``(query cells, reference cells, labels of each query cell's nearest reference cells)`` in the
        expression space, or ``None``.
    seed
        Seed of the density ratios' samples.
    """
    features = neighbourhood_features(similarities, posterior)
    if len(query) >= MIN_QUERY_CELLS:
        features["log_density_ratio"], _ = density_ratio(query, reference, seed=seed)
    if expression is not None:
        q_expr, ref_expr, expr_labels = expression
        features[AGREEMENT] = agreement(expr_labels, posterior.argmax(axis=1))
        if len(query) >= MIN_QUERY_CELLS:
            ratio, similarity = density_ratio(q_expr, ref_expr, seed=seed)
            features["log_expression_density_ratio"] = ratio - np.median(ratio)
            features["expression_similarity"] = similarity - np.median(similarity)
    return features
