"""The classifier's second opinion: the vote of a cell's nearest labeled cells in the reference's scaled
expression space, pooled with the classifier's own calibrated posterior.

Mapping pools its vote in the embedding with the same kind of vote in the reference's scaled expression space
(:mod:`scconcerto.mapping.label_model`): a label needs the support of the cell's neighbours in both. The
classifier does the same with its fine-tuned posterior. The expression vote
(:class:`~scconcerto.mapping.posterior.VotePosterior`) is cast among the classifier's feature-bank cells (labeled
training cells) in the expression space of the model's reference. The vote's smoothing and power, and the power
of the pooled product (:func:`~scconcerto.mapping.posterior.fit_pool_power`), are fitted on the classifier's
held-out labeled cells with Platt's correction (:func:`~scconcerto.mapping.posterior.smoothed_targets`): a few
held-out cells all voted right cannot make the vote certain, so that it does not outvote the classifier on a
query whose expression is shifted. A model without that space (its mapping not prepared, or saved before the
space was kept) gives its classifier no second opinion.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._errors import ModelFileError
from ..data.scaled_space import ScaledSpace
from ..mapping.label_model import DEFAULT_K, neighbour_labels
from ..mapping.posterior import VotePosterior, fit_pool_power, label_frequencies, platt_smoothing, pool_posteriors
from ..search.neighbors import knn
from ._reference import ReferenceSearch

__all__ = ["ExpressionOpinion", "expression_space_of", "fit_expression_opinion"]


@dataclass(frozen=True)
class ExpressionOpinion:
    """The fitted expression vote of a classifier and how it is pooled.

    Attributes
    ----------
    vote
        The calibrated vote of a cell's ``vote.k`` nearest feature-bank cells in the expression space.
    tau
        Power of the pooled product of the classifier's posterior and the vote.
    """

    vote: VotePosterior
    tau: float

    def posterior(self, expression: np.ndarray, bank_expression: np.ndarray, bank_codes: np.ndarray) -> np.ndarray:
        """``(n, n_classes)``: the vote of each cell (rows of ``expression``) among the bank cells."""
        k = int(min(self.vote.k, len(bank_expression)))
        found = knn(np.asarray(expression, dtype=np.float32), np.asarray(bank_expression, dtype=np.float32), k=k)
        labels = neighbour_labels(found.indices, np.asarray(bank_codes))
        return replace(self.vote, k=k).posterior(found.similarities, labels)

    def pool(self, posterior: np.ndarray, expression: np.ndarray, bank_expression: np.ndarray,
             bank_codes: np.ndarray) -> np.ndarray:
        """The classifier's ``posterior`` pooled with the expression vote of the same cells."""
        return pool_posteriors([posterior, self.posterior(expression, bank_expression, bank_codes)], self.tau)

    def to_dict(self) -> dict:
        return {"vote": self.vote.to_dict(), "tau": float(self.tau)}

    @classmethod
    def from_dict(cls, d: Any, n_classes: int) -> "ExpressionOpinion":
        """The opinion a dict of :meth:`to_dict` describes; :class:`ModelFileError` when it does not fit."""
        try:
            vote = VotePosterior.from_dict(d["vote"])
            tau = float(d["tau"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"config.json of the model: classifier.expression_opinion is damaged ({exc}). "
                                 "Fine-tune and save the classifier again.") from exc
        if vote.n_classes != n_classes or not np.isfinite(tau) or tau <= 0:
            raise ModelFileError(f"config.json of the model: classifier.expression_opinion has {vote.n_classes} "
                                 f"classes (the classifier {n_classes}) or pooling power {tau}. Fine-tune and save "
                                 "the classifier again.")
        return cls(vote, tau)


def expression_space_of(model: Any) -> ScaledSpace | None:
    """The scaled expression space of the model's reference, when the model holds one."""
    if getattr(model, "reference", None) is None:
        return None
    scaled = ReferenceSearch(model.reference, {}).scaled()
    return None if scaled is None else scaled[1]


def fit_expression_opinion(space: ScaledSpace, cells: Any, bank_rows: np.ndarray, bank_codes: np.ndarray,
                           held_rows: np.ndarray, held_codes: np.ndarray, held_posterior: np.ndarray
                           ) -> tuple[ExpressionOpinion, np.ndarray] | None:
    """Fit the expression vote and its pooling power on the held-out cells; also return the bank cells in the
    expression space (saved with the classifier). ``None`` when too few held-out cells can be voted.

    Parameters
    ----------
    space
        The reference's scaled expression space.
    cells
        The classifier's labeled cells (model vocabulary).
    bank_rows, bank_codes
        The feature bank's rows of ``cells`` and their class codes.
    held_rows, held_codes, held_posterior
        The held-out rows, their class codes and the classifier's calibrated posterior of them.
    """
    n_classes = held_posterior.shape[1]
    votable = np.isin(held_codes, bank_codes)  # a class absent from the bank cannot be voted for
    if votable.sum() < 2 * DEFAULT_K or len(np.unique(held_codes[votable])) < 2:
        return None
    bank_expression = space.project(cells, rows=bank_rows)
    k = int(min(DEFAULT_K, len(bank_rows)))
    found = knn(space.project(cells, rows=held_rows), bank_expression, k=k)
    labels = neighbour_labels(found.indices, bank_codes)
    prior = label_frequencies(bank_codes, n_classes)
    smoothing = platt_smoothing(int(votable.sum()))  # few held-out cells cannot make the vote certain
    vote = VotePosterior.fit(found.similarities[votable], labels[votable], held_codes[votable], prior, k,
                             smoothing=smoothing)
    expression_posterior = vote.posterior(found.similarities, labels)
    tau = fit_pool_power([held_posterior[votable], expression_posterior[votable]], held_codes[votable],
                         smoothing=smoothing)
    return ExpressionOpinion(vote, tau), bank_expression
