"""The cell-type classifier of a Concerto model: fine-tuning, domain adaptation and rejection of unknown types.

The classifier is the teacher of Concerto (a copy of the pre-trained teacher,
or a freshly initialised one for the end-to-end ablation) with a dense +
softmax head, fine-tuned with cross-entropy. With an unlabeled ``target`` it is
fine-tuned with a consistency loss on the target as well (domain adaptation,
the target in its own batch-norm domains). A cell's class posterior is, by default
(``decision="knn"``), the similarity-weighted vote of its nearest labeled training
cells in the fine-tuned feature space (the head only shapes that space during
fine-tuning): on cells of another technology or species, whose features the batch
norm only partly realigns, the local vote follows the reference's types where the
head's linear boundaries, set on the reference alone, cut through shifted clusters
(``decision="head"``: the head's softmax). A stratified held-out part of the
labeled cells calibrates the confidence (temperature scaling) and sets the
threshold below which a cell is called unknown.

The model's own network (and its reference embedding for mapping) is never
changed by fine-tuning: :class:`CellTypeClassifier` holds its own network, typed
state (:class:`ClassifierState`) and feature banks, saved in the model folder
(``classifier.safetensors`` and the ``classifier`` entry of ``config.json``).

An RNA + protein model also calibrates the classifier from RNA alone (proteins
hidden, batch-norm statistics re-estimated per source on the RNA-only cells):
a query without the proteins is predicted that way, each of its sources with
its own statistics, against the RNA-only feature bank and thresholds, as
query mapping searches RNA-only queries in its RNA-only reference embedding.
"""

from __future__ import annotations

import logging
import time
import dataclasses
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy.special import expit

from .._errors import InputError, ModelFileError
from .._copy import with_copy
from .._defaults import DEFAULT_CLASSIFIER_LR, END_TO_END_CLASSIFIER_LR
from .._keys import UNKNOWN_LABEL, confidence_key, known_key, pred_key, unknown_key, unknown_score_key
from ..data.cells import restrict_to_genes
from ..data.genes import matchable_in, vocabulary_found
from ..data.setup import category_codes
from ..data.sources import domain_codes, source_names
from ..data.vocabulary import DEFAULT_MIN_OVERLAP
from ..mapping.label_model import SEEN_PRIOR
from ..nn.heads import TeacherClassifier
from ..tools.calibration import (empirical_cdf, expected_calibration_error, feature_knn_similarity,
                                 fit_temperature, probability_to_log_odds, rejection_threshold,
                                 scaled_probabilities, score_quantiles, top_class_log_odds)
from ..tools.label_shift import query_balance_weights, set_balanced_moments, subsample_per_group
from ..train import with_new_domains
from ..train.classifier import (ClassifierConfig, classifier_hidden_states, classifier_outputs,
                                fit_classifier_network, outputs_of_hidden)
from ._classifier_expression import ExpressionOpinion, expression_space_of, fit_expression_opinion
from ._query_embedding import LABEL_SHIFT_CELLS, LABEL_SHIFT_ROUNDS
from ._schema import check_bounded, check_dataclass

log = logging.getLogger("scconcerto")

TARGET_SOURCE = "target"
QUERY_SOURCE = "query"
#: ``"reference"``: the probability of a known type from mapping's novelty model (one model for both);
#: the others are the classifier's own scores.
UNKNOWN_SCORES = ("reference", "combined", "knn", "max_softmax")
#: Share of the classifier's genes a dataset may lack before predicting it warns (a tenth).
MISSING_GENES_WARNING = 0.1
FEATURE_BANK = "feature_bank"
FEATURE_BANK_RNA_ONLY = "feature_bank_rna_only"
FEATURE_BANK_LABELS = "feature_bank_labels"
#: The feature bank's cells in the reference's scaled expression space (the expression vote's voters).
EXPRESSION_BANK = "expression_bank"
#: How a cell's class posterior is formed: the vote of its nearest labeled training cells in the classifier's
#: feature space (``"knn"``), or the softmax of the head (``"head"``).
DECISIONS = ("knn", "head")


#: Weight of the target consistency loss. 0, no adaptation: chosen on the development tasks only, where no
#: weight (0.3, 1) with any guard threshold (0, 0.5, 0.75, 0.9) beat the classifier fine-tuned without the target
#: (``benchmarks/ADAPTATION.md``, ``python -m benchmarks.adaptation``).
DEFAULT_CONSISTENCY_WEIGHT = 0.0
#: Adapted / non-adapted effective number of predicted target classes below which adaptation has collapsed
#: (the best threshold for an adapted classifier on those tasks).
DEFAULT_COLLAPSE_RATIO = 0.9


def knn_decision_logits(features: np.ndarray, bank: np.ndarray, bank_codes: np.ndarray, n_classes: int,
                        k: int) -> np.ndarray:
    """Log class shares of the similarity-weighted vote of each row's ``k`` nearest ``bank`` rows (cosine),
    ``(n_rows, n_classes)`` float64.

    The shares are smoothed by one more neighbour's vote spread evenly over the classes, so that every class
    has a finite logit; ``softmax(logits / T)`` is then a temperature-calibrated vote (``T`` fitted on
    held-out cells), whose most probable class is the plain vote's.
    """
    from ..search.neighbors import knn
    from ..tools.label_transfer import vote

    k = int(min(k, len(bank)))
    votes = vote(knn(features, bank, k), np.asarray(bank_codes, dtype=np.int64), n_classes).votes.astype(np.float64)
    total = votes.sum(axis=1, keepdims=True)
    shares = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
    return np.log((shares + 1.0 / (k * n_classes)) / (1.0 + 1.0 / k))


def effective_classes(labels: np.ndarray, n_classes: int) -> tuple[float, np.ndarray]:
    """``exp`` of the Shannon entropy of the class shares of integer ``labels`` (1: one class; ``n_classes``:
    all equally frequent), and the shares."""
    shares = np.bincount(labels, minlength=n_classes) / max(labels.size, 1)
    nz = shares[shares > 0]
    return float(np.exp(-(nz * np.log(nz)).sum())), shares


def adaptation_check(plain: TeacherClassifier, adapted: TeacherClassifier, target: Any, classes: list[str],
                     collapse_ratio: float, device: str = "auto") -> dict:
    """Compare the target's predicted composition under the adapted and the non-adapted classifier.

    The non-adapted classifier sees the target's sources with AdaBN statistics (as :meth:`predict` does);
    the adapted one with the statistics learnt for them. Returns the effective number of classes, the
    largest class and its share under each, the fraction of cells given the same label, and ``collapsed``.
    """
    n_labeled = plain.n_domains
    new_domains = sorted(set(target.domains[target.domains >= n_labeled].tolist()))
    plain_logits, _ = classifier_outputs(plain, target, device=device, adapt_domains=new_domains or None)
    adapted_logits, _ = classifier_outputs(adapted, target, device=device)
    out: dict[str, Any] = {}
    for name, logits in (("plain", plain_logits), ("adapted", adapted_logits)):
        eff, shares = effective_classes(logits.argmax(1), len(classes))
        out[f"effective_classes_{name}"] = round(eff, 4)
        out[f"largest_class_{name}"] = classes[int(shares.argmax())]
        out[f"largest_share_{name}"] = round(float(shares.max()), 4)
    out["agreement"] = round(float((plain_logits.argmax(1) == adapted_logits.argmax(1)).mean()), 4)
    ratio = out["effective_classes_adapted"] / max(out["effective_classes_plain"], 1e-12)
    out.update({"ratio": round(ratio, 4), "collapse_ratio": float(collapse_ratio),
                "collapsed": bool(ratio < collapse_ratio)})
    out["used"] = not out["collapsed"]
    return out


def default_classifier_epochs(n_cells: int) -> int:
    """Fine-tuning epochs for about 20k labeled-cell visits, between 10 and 60."""
    return int(min(60, max(10, -(-20_000 // max(n_cells, 1)))))


def stratified_holdout(codes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a held-out part of each class (about ``fraction``; each class keeps a training cell).

    Cells with code ``-1`` are never held out. Vectorized: a random rank within each class.
    """
    codes = np.asarray(codes, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held = np.zeros(codes.size, dtype=bool)
    labeled = np.flatnonzero(codes >= 0)
    if fraction <= 0 or labeled.size == 0:
        return held
    c = codes[labeled]
    order = np.lexsort((rng.random(c.size), c))
    counts = np.bincount(c)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(c.size) - starts[c[order]]
    n_held = np.minimum(np.floor(counts * fraction + 0.5).astype(np.int64), np.maximum(counts - 1, 0))
    held[labeled[order[rank < n_held[c[order]]]]] = True
    return held


@dataclass(frozen=True)
class AnnotationPrediction:
    """Classifier output for each cell of a dataset.

    Attributes
    ----------
    label_key
        The label the classifier predicts.
    classes
        Class names (columns of ``probabilities``).
    labels
        Predicted class name per cell (``"unknown"`` where rejected, when rejection was asked for).
    probabilities
        ``(n_cells, n_classes)`` calibrated class probabilities (rows sum to one).
    confidence
        Calibrated top probability per cell (0-1).
    log_odds
        ``log(confidence / (1 - confidence))``, computed without rounding (ranks cells like ``confidence``).
    familiarity
        Cosine similarity of the cell's teacher features to its k-th nearest training cell.
    typicality
        ``min`` over the two scores (``log_odds``, ``familiarity``) of the fraction of held-out cells of
        seen types scoring lower (0-1; low: unlike the training types by either score).
    unknown
        The rejection score (``typicality``, ``familiarity`` or ``confidence``, see ``unknown_score``)
        below its threshold.
    unknown_score
        Which score decided ``unknown``.
    gene_overlap
        Gene alignment summary of the dataset against the model's genes.
    modalities
        ``"rna+protein"``, ``"rna"`` (an RNA-only model) or ``"rna_only"`` (an RNA + protein
        model predicting cells without the proteins, with its RNA-only calibration).
    known_prob
        With the ``"reference"`` score: the probability that the cell is of a type the reference has.
    """

    label_key: str
    classes: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    confidence: np.ndarray
    log_odds: np.ndarray
    familiarity: np.ndarray
    typicality: np.ndarray
    unknown: np.ndarray
    unknown_score: str
    gene_overlap: dict
    modalities: str = "rna"
    known_prob: np.ndarray | None = None

    @property
    def score(self) -> np.ndarray:
        """The values of the rejection score (``unknown`` is this below its threshold)."""
        if self.unknown_score == "reference":
            return self.known_prob
        return {"combined": self.typicality, "knn": self.familiarity,
                "max_softmax": self.confidence}[self.unknown_score]


def _typicality(log_odds: np.ndarray, familiarity: np.ndarray, quantiles: dict) -> np.ndarray:
    """Smaller of the two scores' empirical CDF values among held-out cells of seen types (0-1)."""
    return np.minimum(empirical_cdf(log_odds, np.asarray(quantiles["log_odds"])),
                      empirical_cdf(familiarity, np.asarray(quantiles["familiarity"])))


def _label_column(adata: ad.AnnData, label_key: str) -> pd.Series:
    if label_key not in adata.obs:
        raise InputError(f"The label column `obs[{label_key!r}]` is not in the data; its obs columns are "
                         f"{list(adata.obs.columns)[:20]}. Pass the column of cell-type labels as label_key.")
    col = adata.obs[label_key]
    return col.astype(object).where(col.notna(), None)


@dataclass
class Calibration:
    """How a classifier's scores are read: fitted on its held-out labeled cells.

    Attributes
    ----------
    temperature
        Temperature of the calibrated softmax.
    thresholds
        Unknown threshold of each score (``max_softmax``, ``max_softmax_log_odds``, ``knn``, ``combined``);
        ``None`` where none could be chosen.
    score_quantiles
        Quantiles of the held-out cells' ``log_odds`` and ``familiarity`` (``typicality`` reads them).
    calibration
        Held-out accuracy, ECE before and after temperature scaling, the false rejection rate.
    """

    temperature: float
    thresholds: dict[str, float | None]
    score_quantiles: dict[str, list[float]] | None = None
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ClassifierState:
    """What a fitted :class:`CellTypeClassifier` is, besides its tensors: saved in ``config.json``.

    Attributes
    ----------
    label_key, classes
        The label it predicts and the class names (columns of the probabilities).
    pretrained
        Fine-tuned from the pre-trained teacher (``False``: end to end from a fresh initialisation).
    architecture
        Sizes :class:`~scconcerto.nn.heads.TeacherClassifier` is built with.
    domains, target_sources
        Its batch-norm domains (the model's sources, then new labeled and target sources), and the target's.
    config
        The :class:`~scconcerto.train.classifier.ClassifierConfig` it was fine-tuned with.
    n_train, n_validation, n_target
        Labeled cells trained on and held out; target cells adapted to.
    adaptation
        The domain adaptation guard's record (``None`` without a target).
    gene_overlap, target_gene_overlap
        Gene alignment of the labeled data and of the target.
    history, train_seconds
        Per-epoch losses and fine-tuning time.
    unknown_score, knn_k, feature_bank_size
        The default rejection score; neighbour rank of ``knn``; training cells kept as reference features.
    temperature, thresholds, score_quantiles, calibration
        Its :class:`Calibration` on cells with all of the model's modalities.
    rna_only
        Of an RNA + protein model: its :class:`Calibration` from RNA alone.
    decision
        How the class posterior is formed (:data:`DECISIONS`; ``"knn"`` votes with ``knn_k`` neighbours among
        the feature bank, whose labels are saved with it). Classifiers saved without it used ``"head"``.
    expression_opinion
        The expression vote pooled with the posterior (an
        :class:`~scconcerto.model._classifier_expression.ExpressionOpinion` as a dict); ``None``: the classifier's
        posterior alone (as classifiers saved before 2026-12-07).
    genes
        The model's genes the classifier reads (those its target has), in the model's order; ``None``: all of
        them. Other genes of any data it fits or predicts read as not detected.
    """

    label_key: str
    classes: list[str]
    pretrained: bool
    architecture: dict[str, Any]
    domains: list[str]
    target_sources: list[str]
    config: dict[str, Any]
    n_train: int
    n_validation: int
    n_target: int
    adaptation: dict[str, Any] | None
    gene_overlap: dict[str, Any]
    target_gene_overlap: dict[str, Any] | None
    history: list[dict]
    train_seconds: float
    unknown_score: str
    knn_k: int
    feature_bank_size: int
    temperature: float
    thresholds: dict[str, float | None]
    score_quantiles: dict[str, list[float]] | None = None
    calibration: dict[str, Any] | None = None
    rna_only: Calibration | None = None
    decision: str = "head"
    expression_opinion: dict[str, Any] | None = None
    genes: list[str] | None = None

    @property
    def full(self) -> Calibration:
        """The calibration of cells with all of the model's modalities."""
        return Calibration(self.temperature, self.thresholds, self.score_quantiles, self.calibration)

    def to_dict(self) -> dict:
        """A JSON-able dict (the ``classifier`` entry of ``config.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ClassifierState":
        """The state a dict of :meth:`to_dict` describes; :class:`ModelFileError` when its entries do not fit."""
        check_dataclass(d, cls, "classifier")
        rna_only = d.get("rna_only")
        if rna_only is not None:
            check_dataclass(rna_only, Calibration, "classifier.rna_only")
        if d["unknown_score"] not in UNKNOWN_SCORES:
            raise ModelFileError(f"config.json of the model: classifier.unknown_score is {d['unknown_score']!r:.40}, "
                                 f"not one of {UNKNOWN_SCORES}. Fine-tune and save the classifier again.")
        if d.get("decision", "head") not in DECISIONS:
            raise ModelFileError(f"config.json of the model: classifier.decision is {d['decision']!r:.40}, not one of "
                                 f"{DECISIONS}. Fine-tune and save the classifier again.")
        return cls(**{**d, "rna_only": None if rna_only is None else Calibration(**rna_only)})


class CellTypeClassifier:
    """A cell-type classifier fine-tuned on the teacher of a :class:`~scconcerto.Concerto` model, calibrated,
    with unknown-type rejection; saved in the model's folder (``classifier.safetensors``).

    Build one with :meth:`fit` (or ``model.fit_classifier``, which keeps it as ``model.classifier``). It reads
    the model (its gene setup, sources and mapping's novelty model) and never changes it.

    Parameters
    ----------
    model
        The Concerto model it was fitted on.
    network
        The fine-tuned teacher with its classification head.
    state
        Its settings and calibration.
    feature_bank, feature_bank_rna_only
        Teacher features of (a sample of) the training cells, with all modalities and from RNA alone.
    feature_bank_labels
        Class codes of the feature bank's cells (the ``"knn"`` decision and the expression vote vote with them).
    expression_bank
        The feature bank's cells in the reference's scaled expression space (with an expression opinion).
    """

    def __init__(self, model: Any, network: TeacherClassifier, state: ClassifierState, feature_bank: np.ndarray,
                 feature_bank_rna_only: np.ndarray | None = None, feature_bank_labels: np.ndarray | None = None,
                 expression_bank: np.ndarray | None = None):
        self.opinion = None if state.expression_opinion is None else ExpressionOpinion.from_dict(
            state.expression_opinion, len(state.classes))
        if (state.decision == "knn" or self.opinion is not None) and (
                feature_bank_labels is None or len(feature_bank_labels) != len(feature_bank)):
            raise ValueError("the 'knn' decision and the expression vote need the class code of every feature bank "
                             "cell")
        if self.opinion is not None and (expression_bank is None or len(expression_bank) != len(feature_bank)):
            raise ValueError("the expression vote needs every feature bank cell in the expression space")
        self.model = model
        self.network = network.eval()
        self.state = state
        self.feature_bank = feature_bank
        self.feature_bank_rna_only = feature_bank_rna_only
        self.feature_bank_labels = feature_bank_labels
        self.expression_bank = expression_bank if self.opinion is not None else None

    def decision_logits(self, logits: np.ndarray, features: np.ndarray, bank: np.ndarray) -> np.ndarray:
        """The logits the class posterior is the calibrated softmax of: the head's ``logits``, or the log shares
        of the vote of the ``knn_k`` nearest cells of ``bank`` (:func:`knn_decision_logits`)."""
        return decision_logits(self.state.decision, logits, features, bank, self.feature_bank_labels,
                               self.state.knn_k)

    def __repr__(self) -> str:
        return (f"CellTypeClassifier({self.state.label_key!r}, {len(self.state.classes)} classes, "
                f"unknown_score={self.state.unknown_score!r})")

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, model: Any, adata: ad.AnnData | None = None, label_key: str | None = None,
            target: ad.AnnData | None = None, pretrain: bool = True, class_balanced: bool = False,
            epochs: int | None = None, batch_size: int = 128, lr: float | None = None,
            consistency_weight: float = DEFAULT_CONSISTENCY_WEIGHT, sharpen_temperature: float = 0.5,
            collapse_ratio: float = DEFAULT_COLLAPSE_RATIO,
            validation_fraction: float = 0.1, false_rejection_rate: float = 0.05,
            unknown_score: str = "auto", knn_k: int = 10, feature_bank_size: int = 20_000, decision: str = "knn",
            expression_vote: bool = True, head_dropout: float = 0.0, batch_key: str | None = "__setup__",
            target_batch_key: str | None = "__setup__", min_overlap: float = DEFAULT_MIN_OVERLAP,
            target_species: str | None = None, shared_genes: bool = True, pretrain_epochs: int | None = None,
            seed: int | None = None, device: str = "auto", progress: bool | None = None,
            **kwargs: Any) -> "CellTypeClassifier":
        """Fine-tune a cell-type classifier on the teacher of ``model``; calibrate it and set the unknown threshold.

        Parameters
        ----------
        model
            A :class:`~scconcerto.Concerto` model (pre-trained first when ``pretrain`` and it is not trained yet).
        adata
            Labeled cells (default: the reference the model was built on). Genes are aligned by name.
        label_key
            ``obs`` column of the cell types (default: the model's only label key). Missing labels are not used.
        target
            Unlabeled cells the classifier is for. With ``shared_genes`` (default) the classifier learns from the
            model's genes the target has only. When ``consistency_weight > 0`` it is also adapted to them
            (inter-dataset mode): a consistency loss on them is added, and their sources get their own
            batch-norm statistics. The loss sharpens the predictions of every target cell, those of types the
            labeled data lack included, so unknown rejection on the target is weaker after adaptation
            (``consistency_min_confidence`` restricts it to confident cells). With the default weight 0
            predicting the target later adapts the batch-norm statistics to its sources (AdaBN) all the same.
        pretrain
            Start from the contrastively pre-trained teacher (pre-training the model first if it is not
            trained yet). ``False``: end-to-end training from a fresh initialisation (the paper's ablation).
        class_balanced
            Weight the cross-entropy by inverse class frequency.
        epochs
            Fine-tuning epochs (default: by the number of labeled cells, see :func:`default_classifier_epochs`).
        batch_size, lr
            Mini-batch size and initial Adam learning rate (default: ``DEFAULT_CLASSIFIER_LR`` when fine-tuning the
            pre-trained teacher, chosen on the development tasks in ``benchmarks/CLASSIFIER.md``;
            ``END_TO_END_CLASSIFIER_LR`` end to end, see :mod:`scconcerto._defaults`).
        consistency_weight, sharpen_temperature
            Weight of the target consistency loss (default 0: no adaptation, see
            :data:`DEFAULT_CONSISTENCY_WEIGHT`) and sharpening temperature of its soft targets.
        collapse_ratio
            Guard against collapse of domain adaptation: the classifier is also fine-tuned without the
            target, and when the adapted one's predicted target composition has fewer than
            ``collapse_ratio`` times the effective number of classes (exp of the entropy of the predicted
            class shares) of the non-adapted one's, adaptation is reported as collapsed (a warning, and
            ``annotation_summary["adaptation"]``) and the non-adapted classifier is kept. ``0``: no guard
            (one fine-tuning).
        validation_fraction
            Stratified fraction of labeled cells held out of training to calibrate the confidence
            (temperature scaling) and choose the unknown threshold (0: no calibration, no rejection).
        false_rejection_rate
            Fraction of held-out (seen-type) cells allowed below the unknown threshold.
        unknown_score
            Default score that flags unknown cells: ``"reference"``, the probability that the cell is of a
            type the reference has, from mapping's novelty model (:meth:`~scconcerto.Concerto.known_probability`; the default,
            ``"auto"``, when ``label_key`` is a reference label key with a calibrated decision);
            ``"max_softmax"``, the calibrated top probability;
            ``"knn"``, the cosine similarity of a cell's teacher features to its ``knn_k``-th nearest
            training cell (Sun et al., 2022); ``"combined"``, the smaller of their empirical CDF values
            on the held-out cells (unknown when atypical by either). Every threshold is chosen on the
            held-out cells and stored, so :meth:`predict` can switch scores.
        knn_k, feature_bank_size
            Neighbour rank of the ``knn`` score and neighbours of the ``"knn"`` decision, and at most this
            many training cells kept (a seeded random subset) as the reference features saved with the
            classifier.
        decision
            ``"knn"`` (default): the class posterior is the calibrated similarity-weighted vote of a cell's
            ``knn_k`` nearest training cells (of the feature bank) in the fine-tuned feature space;
            ``"head"``: the calibrated softmax of the classifier head. The default and ``knn_k`` were chosen
            on development tasks only (symphony 3' -> 5', and 3' -> 5' and Kang as simulated mouse).
        expression_vote
            Pool the posterior with the vote of the cell's nearest labeled cells in the reference's scaled
            expression space, as mapping pools its two votes (:mod:`scconcerto.model._classifier_expression`;
            only when the model keeps that space, and with held-out cells to fit it on; chosen on the
            development tasks: ``benchmarks/CLASSIFIER.md``). The unknown scores read the classifier's own
            posterior.
        head_dropout
            Dropout before the classifier head.
        batch_key, target_batch_key
            ``obs`` columns of the sources of ``adata`` and ``target`` (default: the model's batch key).
            Target cells without the column form one source named ``"target"``.
        min_overlap
            Smallest fraction of the model's genes the data must have.
        target_species
            ``"human"`` or ``"mouse"`` when the target is of another species than the model (genes matched
            by 1:1 orthologs, :mod:`scconcerto.data.genes`); predict it with the same ``query_species``.
        shared_genes
            With a target: fine-tune, calibrate and predict from the model's genes the target has (the others
            read as not detected, in the labeled cells and in every cell predicted later), so that the
            classifier does not learn to rely on genes the target lacks (another species' genes without a 1:1
            ortholog, another gene panel). With ``target_species`` and no target: from the genes with a 1:1
            ortholog in that species. Chosen on the development tasks: ``benchmarks/CLASSIFIER.md``.
        pretrain_epochs
            Epochs of the contrastive pre-training, when it has to run.
        seed
            Seed (default: the model's).
        device, progress
            ``"auto"``, ``"cpu"`` or ``"cuda"``; draw progress bars (``None``: as ``scconcerto.settings.progress``).
        **kwargs
            Other :class:`~scconcerto.train.classifier.ClassifierConfig` fields (``label_smoothing``,
            ``max_genes``, ``gene_dropout``, ``weight_decay``, ``consistency_min_confidence``...).

        Returns
        -------
        CellTypeClassifier
            The fitted classifier; its settings and calibration in :attr:`summary`.
        """
        seed = model.seed if seed is None else seed
        data = model.adata if adata is None else adata
        if data is None:
            raise InputError("No labeled data: this model has no reference attached (it was loaded); pass `adata=`.")
        if not isinstance(data, ad.AnnData):
            raise InputError(f"Expected an AnnData of labeled cells, got {type(data).__name__}.")
        label_key = _resolve_label_key(model, label_key)
        labels = _label_column(data, label_key)
        classes = sorted(pd.unique(labels.dropna().astype(str)).tolist())
        if len(classes) < 2:
            raise InputError(f"`obs[{label_key!r}]` holds {len(classes)} cell type(s); a classifier needs at "
                             "least two.")
        codes = category_codes(labels, classes)  # compared as strings, like `classes`
        if not 0.0 <= validation_fraction < 1.0:
            raise InputError(f"validation_fraction must lie in [0, 1), got {validation_fraction}.")
        if batch_size < 2:
            raise InputError(f"batch_size must be at least 2 (batch normalization), got {batch_size}.")
        if decision not in DECISIONS:
            raise InputError(f"decision must be one of {DECISIONS}, got {decision!r}.")
        if isinstance(knn_k, bool) or not isinstance(knn_k, (int, np.integer)) or knn_k < 1:
            raise InputError(f"knn_k must be a positive number of neighbours, got {knn_k!r}.")
        if unknown_score not in (*UNKNOWN_SCORES, "auto"):
            raise InputError(f"unknown_score must be 'auto' or one of {UNKNOWN_SCORES}, got {unknown_score!r}.")
        if not np.isfinite(consistency_weight) or consistency_weight < 0:
            raise InputError(f"consistency_weight must be a number of at least 0 (0: no adaptation), got "
                             f"{consistency_weight!r}.")
        adapt = target is not None and consistency_weight > 0
        if target is not None and not adapt:
            log.warning("The classifier is not adapted to the target (consistency weight %g, the default: no "
                        "adaptation setting beat it on the development tasks, benchmarks/ADAPTATION.md); %s. Pass "
                        "consistency_weight > 0 (`--consistency-weight`) to adapt to it.", consistency_weight,
                        "it learns from the genes the target has" if shared_genes else "it learns from every gene")
        if pretrain and not model.is_trained:
            model.train(epochs=pretrain_epochs, seed=seed, device=device, progress=progress)

        domains = list(model.setup.sources)
        source = model._prepare(data, batch_key=None, min_overlap=min_overlap, what="the labeled data")
        names = source_names(data, batch_key, model.setup.batch_key, model.setup.sources, QUERY_SOURCE,
                             "the labeled data")
        source.cells.domains, unseen = domain_codes(names, domains)
        domains.extend(unseen)
        target_cells, target_names, target_overlap, genes = None, [], None, None
        if target is not None:
            prepared = model._prepare(target, batch_key=None, min_overlap=min_overlap, what="the target",
                                      query_species=target_species)
            target_overlap = prepared.alignment.summary()
            if shared_genes:
                genes = genes_of(model, prepared.alignment)
        elif shared_genes and target_species is not None:  # no target: the genes its species can have
            genes = _genes_where(model, matchable_in(model.setup.genes, target_species))
        if genes is not None:
            if not genes:
                raise InputError("The target has none of the model's genes: the classifier has nothing to learn from. "
                                 "Check the target's gene names and target_species.")
            log.info("The classifier learns from the %d of the model's %d genes the target %s.", len(genes),
                     len(model.setup.genes), "has" if target is not None else f"can have as {target_species}")
            source.cells = read_only_genes(model, source.cells, genes)
        if adapt:
            names = source_names(target, target_batch_key, model.setup.batch_key, (), TARGET_SOURCE, "the target")
            codes_in_target, target_names = domain_codes(names)  # every target source has its own domain
            clash = sorted(set(target_names) & set(domains))
            if clash:
                log.warning("Target source(s) %s have the names of labeled sources; they get their own batch-norm "
                            "statistics, and at prediction cells of these sources use the target's.", clash)
            prepared.cells.domains = len(domains) + codes_in_target
            domains = domains + target_names
            target_cells = prepared.cells

        held = stratified_holdout(codes, validation_fraction, seed)
        train_rows = np.flatnonzero((codes >= 0) & ~held)
        if lr is None:
            lr = DEFAULT_CLASSIFIER_LR if pretrain else END_TO_END_CLASSIFIER_LR
        config = ClassifierConfig(epochs=epochs or default_classifier_epochs(train_rows.size), batch_size=batch_size,
                                  lr=lr, class_balanced=class_balanced, consistency_weight=consistency_weight,
                                  sharpen_temperature=sharpen_temperature, seed=seed, device=device,
                                  progress=progress, **kwargs)
        train_labels = np.where(held, -1, codes)
        start = time.perf_counter()
        network, history = _fine_tuned(model, len(classes), pretrain, head_dropout, len(domains), source.cells,
                                       train_rows, train_labels, config, target_cells, seed)
        adaptation = None
        if adapt and collapse_ratio > 0:
            # the same fine-tuning without the target: the fallback, and what the target's composition is compared with
            n_labeled = len(domains) - len(target_names)
            plain, plain_history = _fine_tuned(model, len(classes), pretrain, head_dropout, n_labeled, source.cells,
                                               train_rows, train_labels, config, None, seed)
            adaptation = adaptation_check(plain, network, target_cells, classes, collapse_ratio, device)
            adaptation["target_sources"] = list(target_names)
            if adaptation["collapsed"]:
                log.warning("Domain adaptation made the target's predicted composition collapse onto few classes "
                            "(%.2f effective classes, %.2f without adaptation; largest class %s at %.0f%% vs "
                            "%.0f%%): the classifier without adaptation is kept.",
                            adaptation["effective_classes_adapted"], adaptation["effective_classes_plain"],
                            adaptation["largest_class_adapted"], 100 * adaptation["largest_share_adapted"],
                            100 * adaptation["largest_share_plain"])
                network, history = plain, plain_history
                domains, target_names = domains[:n_labeled], []
        seconds = time.perf_counter() - start
        network.eval()
        rng = np.random.default_rng(seed)
        bank_rows = np.sort(rng.choice(train_rows, min(feature_bank_size, train_rows.size), replace=False))
        _, bank = classifier_outputs(network, source.cells, bank_rows, device=device)
        bank_codes = codes[bank_rows].astype(np.int64)
        calibration, held_logits = _calibrate(network, bank, bank_codes, decision, source.cells, np.flatnonzero(held),
                                              codes, false_rejection_rate, knn_k, device)
        opinion, expression_bank = (_expression_opinion(model, source.cells, bank_rows, bank_codes,
                                                        np.flatnonzero(held), codes,
                                                        scaled_probabilities(held_logits, calibration.temperature))
                                    if expression_vote else (None, None))
        rna_bank, rna_only = None, None
        if source.cells.protein is not None:
            rna_bank, rna_only = _rna_only_calibration(model, network, data, source.cells.domains, bank_rows,
                                                       bank_codes, decision, np.flatnonzero(held), codes,
                                                       false_rejection_rate, knn_k, min_overlap, device, genes)
        if unknown_score in ("auto", "reference"):
            shared = has_novelty_model(model, label_key, classes)
            if unknown_score == "reference" and not shared:
                raise InputError(f"unknown_score='reference' needs a calibrated mapping decision for {label_key!r} "
                                 "over the classifier's classes (train the reference with that label key).")
            unknown_score = "reference" if shared else "combined"
        state = ClassifierState(
            label_key=label_key, classes=classes, pretrained=bool(pretrain), architecture=network.architecture(),
            domains=domains, target_sources=target_names, config=config.to_dict(), n_train=int(train_rows.size),
            n_validation=int(held.sum()), n_target=int(target_cells.n_cells) if target_cells is not None else 0,
            adaptation=adaptation, gene_overlap=source.alignment.summary(), target_gene_overlap=target_overlap,
            history=history, train_seconds=seconds, unknown_score=unknown_score, knn_k=int(knn_k),
            feature_bank_size=int(bank.shape[0]), temperature=calibration.temperature,
            thresholds=calibration.thresholds, score_quantiles=calibration.score_quantiles,
            calibration=calibration.calibration, rna_only=rna_only, decision=decision,
            expression_opinion=None if opinion is None else opinion.to_dict(), genes=genes)
        return cls(model, network, state, bank, rna_bank,
                   bank_codes if decision == "knn" or opinion is not None else None, expression_bank)

    # ------------------------------------------------------------------ prediction
    @property
    def summary(self) -> dict:
        """Settings, calibration (temperature, ECE, held-out accuracy) and history (:class:`ClassifierState`)."""
        return self.state.to_dict()

    def predict_logits(self, adata: ad.AnnData, batch_key: str | None = "__setup__", batch_size: int = 1024,
                       device: str = "auto", min_overlap: float = DEFAULT_MIN_OVERLAP,
                       query_species: str | None = None) -> np.ndarray:
        """Uncalibrated logits ``(n_cells, n_classes)`` of the classifier's decision (the head's, or the log
        vote shares of the ``"knn"`` decision; the calibrated posterior is their softmax at the fitted
        temperature); sets ``model.last_alignment``.

        Cells of a source the classifier was trained on (labeled or target) use its batch-norm
        statistics; cells of other sources get AdaBN statistics estimated on themselves.
        """
        logits, features, modalities, _ = self._outputs(adata, batch_key, batch_size, device, min_overlap,
                                                        query_species)
        return self.decision_logits(logits, features, self._calibration_for(modalities)[1])

    def _outputs(self, adata: ad.AnnData, batch_key: str | None, batch_size: int, device: str,
                 min_overlap: float, query_species: str | None = None) -> tuple[np.ndarray, np.ndarray, str, Any]:
        """Logits, features, the modalities used (see :attr:`AnnotationPrediction.modalities`) and the prepared cells.

        Cells without the model's proteins are RNA-only: every source of theirs gets batch-norm
        statistics estimated on its own cells, as the RNA-only calibration had.
        """
        model, setup = self.model, self.model.setup
        prepared = model._prepare(adata, batch_key=None, min_overlap=min_overlap, what="the data",
                                  query_species=query_species)
        model.last_alignment = prepared.alignment
        self._check_genes(prepared.alignment)
        prepared.cells = read_only_genes(model, prepared.cells, self.state.genes)
        domains = list(self.state.domains)
        names = source_names(adata, batch_key, setup.batch_key, setup.sources, QUERY_SOURCE, "the data")
        modalities = "rna+protein" if prepared.cells.protein is not None else "rna"
        if prepared.cells.protein is None and setup.proteins:
            modalities = "rna_only"
            codes = len(domains) + domain_codes(names)[0]  # every source new: its own statistics
        else:
            codes = domain_codes(names, domains)[0]
        prepared.cells.domains = codes
        adapt = sorted(set(codes[codes >= len(domains)].tolist()))
        if adapt and self.feature_bank_labels is not None:
            network = self._balanced_adabn(prepared.cells, adapt, self._calibration_for(modalities, quiet=True)[1],
                                           batch_size, device)
            logits, features = classifier_outputs(network, prepared.cells, batch_size=batch_size, device=device)
        else:
            logits, features = classifier_outputs(self.network, prepared.cells, batch_size=batch_size,
                                                  device=device, adapt_domains=adapt or None)
        return logits, features, modalities, prepared.cells

    def _check_genes(self, alignment: Any) -> None:
        """Warn when the data lacks more than :data:`MISSING_GENES_WARNING` of the genes the classifier reads."""
        have = genes_of(self.model, alignment)
        if have is None:
            return
        reads = self.model.setup.genes if self.state.genes is None else self.state.genes
        missing = len(set(reads) - set(have))
        if missing > MISSING_GENES_WARNING * len(reads):
            log.warning("The data lacks %d of the %d genes the classifier learned from (%.0f%%): it relies on genes "
                        "these cells do not have. Fine-tune the classifier for them: `fit_classifier(target=...)` "
                        "(`scconcerto annotate train --target`) learns from the genes the target has.",
                        missing, len(reads), 100 * missing / len(reads))

    def _balanced_adabn(self, cells: Any, new_domains: list[int], bank: np.ndarray, batch_size: int,
                        device: str) -> TeacherClassifier:
        """A copy of the network whose statistics of the unseen sources ``new_domains`` are AdaBN moments
        balanced for their predicted composition, as mapping's (:mod:`scconcerto.tools.label_shift`).

        Each source's cells (a seeded sample of at most ``LABEL_SHIFT_CELLS``) are weighted to the class
        composition of the feature bank (a sample of the labeled training cells, whose own statistics are
        plain), the classes predicted by the classifier's decision under plain AdaBN first and under the
        reweighted statistics after each of ``LABEL_SHIFT_ROUNDS`` rounds.
        """
        rows = np.flatnonzero(np.isin(cells.domains, new_domains))
        rows = rows[subsample_per_group(cells.domains[rows], LABEL_SHIFT_CELLS, 0)]
        hidden = classifier_hidden_states(self.network, cells, rows, batch_size, device)
        domains = cells.domains[rows]
        net = with_new_domains(self.network, new_domains)
        known = [d for d in range(net.n_domains) if d not in new_domains]
        spec = (self.feature_bank_labels, net.n_classes, "reference")

        def reweight() -> np.ndarray:
            logits, features = outputs_of_hidden(net, hidden, domains)
            return query_balance_weights(self.decision_logits(logits, features, bank).argmax(axis=1), domains, spec)

        set_balanced_moments(net.tail.norm, hidden, domains, new_domains, known, reweight, LABEL_SHIFT_ROUNDS)
        return net.eval()

    def _calibration_for(self, modalities: str, quiet: bool = False) -> tuple[Calibration, np.ndarray]:
        """The calibration (temperature, quantiles, thresholds) and feature bank for cells of ``modalities``
        (with ``quiet``, without saying which)."""
        if modalities != "rna_only":
            return self.state.full, self.feature_bank
        if self.state.rna_only is not None and self.feature_bank_rna_only is not None:
            if not quiet:
                log.info("The data lacks the model's proteins (obsm[%r]): predicting from RNA alone, with the "
                         "classifier's RNA-only calibration.", self.model.setup.protein_key)
            return self.state.rna_only, self.feature_bank_rna_only
        if quiet:
            return self.state.full, self.feature_bank
        log.warning("The data lacks the model's proteins (obsm[%r]) and this classifier was fitted on cells "
                    "without them, so it has no RNA-only calibration: the confidence and the unknown flags are "
                    "those of its labeled cells, and may flag too many cells as unknown. Fit the classifier again "
                    "on labeled cells with the proteins (`scconcerto annotate train`), or give the proteins.",
                    self.model.setup.protein_key)
        return self.state.full, self.feature_bank

    @with_copy()
    def predict(self, adata: ad.AnnData, batch_key: str | None = "__setup__", reject: bool = False,
                unknown_threshold: float | None = None, unknown_score: str | None = None, inplace: bool = True,
                batch_size: int = 1024, device: str = "auto", min_overlap: float = DEFAULT_MIN_OVERLAP,
                query_species: str | None = None, known_share: float | None = None) -> AnnotationPrediction:
        """Predict cell types with the fine-tuned classifier.

        With ``inplace`` (default) writes, for the classifier's label ``L``:
        ``obs['L_pred']``, ``obsm['L_proba']`` (calibrated probabilities; class
        names in ``uns['L_proba_classes']``), ``obs['L_confidence']`` (0-1),
        ``obs['L_unknown']``, ``obs['L_unknown_score']`` (the rejection score it
        thresholds) and ``uns['scconcerto_annotation']`` (score, threshold, modalities used, and
        whether the expression vote was pooled).
        Cells without the proteins of an RNA + protein model are predicted from RNA
        alone, with the classifier's RNA-only calibration.

        Parameters
        ----------
        adata
            Cells to annotate; genes are aligned to the model's by name.
        batch_key
            ``obs`` column of sources (default: the model's batch key; ``None``: all cells are one new source).
        reject
            Write ``"unknown"`` in ``L_pred`` for cells below the threshold.
        unknown_threshold
            Threshold of the rejection score: a probability in [0, 1] for ``"reference"``, a confidence in
            [0, 1] for ``"max_softmax"``, a cosine similarity for ``"knn"``, a typicality in [0, 1] for
            ``"combined"`` (default: the one chosen on held-out cells).
        unknown_score
            ``"reference"`` (mapping's probability of a known type, written to ``obs['L_known_prob']``),
            ``"combined"``, ``"knn"`` or ``"max_softmax"`` (default: the one chosen at fitting).
        inplace
            Write the results into ``adata``.
        copy
            Write the results into a copy of ``adata`` and return the copy (keyword only; ``adata`` is untouched).
        batch_size, device, min_overlap
            Inference settings; smallest fraction of the model's genes the data must have.
        query_species
            ``"human"`` or ``"mouse"`` when the data is of another species than the model: genes are
            matched by 1:1 orthologs. Ensembl ids, versions and letter case are harmonised either way;
            the genes matched by each rule are in ``gene_overlap``.
        known_share
            With the ``"reference"`` score: the share of the cells expected to be of known types, the prior of
            ``obs['L_known_prob']`` (as in :meth:`~scconcerto.Concerto.map_query`; default: even odds). It
            moves the probabilities, not the default unknown flags.

        Returns
        -------
        AnnotationPrediction or AnnData
            The prediction; with ``copy=True``, the annotated copy.
        """
        state, model = self.state, self.model
        score = state.unknown_score if unknown_score is None else unknown_score
        if score not in UNKNOWN_SCORES:
            raise InputError(f"unknown_score must be one of {UNKNOWN_SCORES}, got {score!r}.")
        if score == "reference" and not has_novelty_model(model, state.label_key, state.classes):
            raise InputError(f"unknown_score='reference' needs mapping's decision for {state.label_key!r}, which "
                             "this model does not have; use 'combined'.")
        logits, features, modalities, cells = self._outputs(adata, batch_key, batch_size, device, min_overlap,
                                                            query_species)
        calibration, bank = self._calibration_for(modalities)
        logits = self.decision_logits(logits, features, bank)
        classes = list(state.classes)
        proba = scaled_probabilities(logits, calibration.temperature)
        if self.opinion is not None:
            proba = self.opinion.pool(proba, self._expression_space().project(cells), self.expression_bank,
                                      self.feature_bank_labels).astype(proba.dtype)
        confidence = proba.max(axis=1)
        log_odds = top_class_log_odds(logits, calibration.temperature)
        familiarity = feature_knn_similarity(features, bank, state.knn_k)
        quantiles = calibration.score_quantiles
        typicality = _typicality(log_odds, familiarity, quantiles) if quantiles else np.ones(len(log_odds))
        thresholds = calibration.thresholds
        known = None
        if score == "reference":
            known, default = model.known_probability(adata, state.label_key, batch_key=batch_key,
                                                     batch_size=batch_size, device=device, min_overlap=min_overlap,
                                                     query_species=query_species, known_share=known_share)
            if unknown_threshold is not None and not 0.0 <= unknown_threshold <= 1.0:
                raise InputError(f"unknown_threshold is a probability in [0, 1], got {unknown_threshold}.")
            threshold = default if unknown_threshold is None else float(unknown_threshold)
            unknown = known < threshold
        elif known_share is not None:
            raise InputError(f"known_share is the prior of the 'reference' unknown score (mapping's probability of "
                             f"a known type); this prediction flags unknown cells by {score!r}. Pass "
                             "unknown_score='reference', or leave known_share out.")
        elif score == "max_softmax":
            if unknown_threshold is not None and not 0.0 <= unknown_threshold <= 1.0:
                raise InputError(f"unknown_threshold is a confidence in [0, 1], got {unknown_threshold}.")
            threshold = thresholds["max_softmax"] if unknown_threshold is None else float(unknown_threshold)
            cut = thresholds["max_softmax_log_odds"] if unknown_threshold is None \
                else probability_to_log_odds(unknown_threshold)
            unknown = log_odds < (-np.inf if cut is None else cut)
        else:
            value = familiarity if score == "knn" else typicality
            threshold = thresholds[score] if unknown_threshold is None else float(unknown_threshold)
            unknown = value < (-np.inf if threshold is None else threshold)
        labels = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
        if reject:
            labels = np.where(unknown, UNKNOWN_LABEL, labels)
        result = AnnotationPrediction(state.label_key, classes, labels, proba, confidence, log_odds, familiarity,
                                      typicality.astype(np.float32), unknown, score, model.last_alignment.summary(),
                                      modalities, None if known is None else known.astype(np.float32))
        prior = {"known_share": float(SEEN_PRIOR if known_share is None else known_share)} \
            if score == "reference" else {}
        if inplace:
            write_prediction(adata, result, {"temperature": calibration.temperature, "unknown_score": score,
                                             "expression_vote": self.opinion is not None,
                                             "unknown_threshold": -1.0 if threshold is None else threshold,
                                             "rejected": bool(reject), "modalities": modalities,
                                             **prior,
                                             "model_id": model.model_id})
        return result

    def _expression_space(self) -> Any:
        space = expression_space_of(self.model)
        if space is None:
            raise InputError("This classifier pools its posterior with the reference's expression space, which the "
                             "model no longer holds; run `model.prepare_mapping(reference_adata, overwrite=True)`, "
                             "or fine-tune the classifier again with expression_vote=False.")
        return space

    # ------------------------------------------------------------------ the model folder
    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The classifier's tensors by stable name, for ``classifier.safetensors``."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        state[FEATURE_BANK] = torch.from_numpy(np.ascontiguousarray(self.feature_bank, dtype=np.float32))
        if self.feature_bank_rna_only is not None:
            state[FEATURE_BANK_RNA_ONLY] = torch.from_numpy(
                np.ascontiguousarray(self.feature_bank_rna_only, dtype=np.float32))
        if self.state.decision == "knn" or self.opinion is not None:
            state[FEATURE_BANK_LABELS] = torch.from_numpy(np.ascontiguousarray(self.feature_bank_labels,
                                                                               dtype=np.int64))
        if self.opinion is not None:
            state[EXPRESSION_BANK] = torch.from_numpy(np.ascontiguousarray(self.expression_bank, dtype=np.float32))
        return state

    @classmethod
    def from_tensors(cls, model: Any, tensors: dict[str, torch.Tensor], state: ClassifierState | dict
                     ) -> "CellTypeClassifier":
        """Rebuild a classifier of ``model`` from its saved tensors and state.

        Every tensor must be present with the shape its state implies, finite, and no other; otherwise
        :class:`ModelFileError`.
        """
        if not isinstance(state, ClassifierState):
            state = ClassifierState.from_dict(state)
        if state.genes is not None:
            foreign = sorted(set(state.genes) - set(model.setup.genes))
            if not state.genes or foreign or len(set(state.genes)) != len(state.genes):
                raise ModelFileError(f"config.json of the model: classifier.genes is empty, repeats genes or names "
                                     f"genes the model lacks ({foreign[:5]}). Fine-tune and save the classifier again.")
        nonfinite = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if nonfinite:
            raise ModelFileError(f"The classifier holds NaN or infinite values in {nonfinite[:5]}; it is damaged. "
                                 "Fine-tune and save the classifier again.")
        check_bounded({"architecture": state.architecture, "feature_bank_size": state.feature_bank_size},
                      sum(int(t.numel()) for t in tensors.values()), "classifier")
        try:
            network = TeacherClassifier(**state.architecture)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"The classifier settings in config.json are invalid ({exc}).") from exc
        expected = dict(network.state_dict())
        expected[FEATURE_BANK] = torch.empty(state.feature_bank_size, int(state.architecture.get("out_dim", -1)))
        if state.rna_only is not None:
            expected[FEATURE_BANK_RNA_ONLY] = expected[FEATURE_BANK]
        if state.decision == "knn" or state.expression_opinion is not None:
            expected[FEATURE_BANK_LABELS] = torch.empty(state.feature_bank_size, dtype=torch.int64)
        if state.expression_opinion is not None:  # as wide as the reference's expression space
            space = expression_space_of(model)
            width = space.loadings.shape[1] if space is not None else (
                tensors[EXPRESSION_BANK].shape[-1] if EXPRESSION_BANK in tensors else 0)
            expected[EXPRESSION_BANK] = torch.empty(state.feature_bank_size, width)
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        bad = [k for k in expected if k in tensors and tuple(expected[k].shape) != tuple(tensors[k].shape)]
        if missing or unexpected or bad:
            raise ModelFileError(f"The classifier weights do not match its settings: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}, wrong shape {bad[:5]}. The classifier file is "
                                 "damaged or from another model; fine-tune and save again.")
        labels = tensors.get(FEATURE_BANK_LABELS)
        if labels is not None and (labels.dtype != torch.int64 or labels.numel() and (
                int(labels.min()) < 0 or int(labels.max()) >= len(state.classes))):
            raise ModelFileError(f"The classifier's feature bank labels are not class codes in [0, {len(state.classes)}); "
                                 "the file is damaged. Fine-tune and save the classifier again.")
        try:
            network.load_state_dict({k: v for k, v in tensors.items()
                                     if k not in (FEATURE_BANK, FEATURE_BANK_RNA_ONLY, FEATURE_BANK_LABELS,
                                                  EXPRESSION_BANK)},
                                    strict=True)
        except RuntimeError as exc:
            raise ModelFileError(f"The classifier weights cannot be loaded ({exc}); the file is damaged. Fine-tune "
                                 "and save the classifier again.") from exc
        rna_bank, expression_bank = tensors.get(FEATURE_BANK_RNA_ONLY), tensors.get(EXPRESSION_BANK)
        return cls(model, network, state, tensors[FEATURE_BANK].detach().cpu().numpy().astype(np.float32),
                   None if rna_bank is None else rna_bank.detach().cpu().numpy().astype(np.float32),
                   None if labels is None else labels.detach().cpu().numpy().astype(np.int64),
                   None if expression_bank is None else expression_bank.detach().cpu().numpy().astype(np.float32))


# ---------------------------------------------------------------------- fitting, in parts
def has_novelty_model(model: Any, label_key: str, classes: list[str]) -> bool:
    """Whether mapping's novelty model can flag the classifier's unknown cells: ``label_key`` is a calibrated
    reference key whose labeled reference cells carry exactly the classifier's ``classes``."""
    if getattr(model, "reference", None) is None or label_key not in model.setup.labels:
        return False
    codes = model.reference.labels[label_key]
    names = np.asarray(model.setup.labels[label_key], dtype=object)
    if set(names[np.unique(codes[codes >= 0])].astype(str)) != set(map(str, classes)):
        return False
    try:
        return model.label_model(label_key) is not None
    except InputError:
        return False


def _fine_tuned(model: Any, n_classes: int, pretrain: bool, head_dropout: float, n_domains: int, source: Any,
                train_rows: np.ndarray, labels: np.ndarray, config: ClassifierConfig, target: Any, seed: int
                ) -> tuple[TeacherClassifier, list[dict]]:
    """A new classifier network fine-tuned on ``source`` (and adapted to ``target`` when given), and its history."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if pretrain:
            network = TeacherClassifier.from_network(model.network, n_classes, head_dropout)
        else:
            fresh = model._network_cls(model.setup.n_features, len(model.setup.sources), **model.network_args)
            network = TeacherClassifier.from_network(fresh, n_classes, head_dropout)
        if n_domains > network.n_domains:
            network.tail.norm.add_domains(n_domains - network.n_domains)
        history = fit_classifier_network(network, source, train_rows, labels, config, target)
    return network, history


def genes_of(model: Any, alignment: Any) -> list[str] | None:
    """The model's genes a dataset of ``alignment`` has, in the model's order; ``None`` when it has them all."""
    return _genes_where(model, vocabulary_found(alignment.column_to_vocab, len(model.setup.genes)))


def _genes_where(model: Any, present: np.ndarray) -> list[str] | None:
    """The model's genes where ``present`` (a mask over them) is true, in order; ``None`` when it is all true."""
    return None if present.all() else [g for g, p in zip(model.setup.genes, present) if p]


def read_only_genes(model: Any, cells: Any, genes: list[str] | None) -> Any:
    """``cells`` (aligned to the model's vocabulary) reading only ``genes`` (``None``: all of them)."""
    if genes is None:
        return cells
    return restrict_to_genes(cells, np.isin(np.asarray(model.setup.genes, dtype=object), list(genes)))


def _resolve_label_key(model: Any, label_key: str | None) -> str:
    if label_key is not None:
        return label_key
    keys = list(model.setup.label_keys)
    if len(keys) != 1:
        raise InputError(f"Pass label_key: the model has {len(keys)} label keys {keys}, so which one to "
                         "classify is ambiguous.")
    return keys[0]


def decision_logits(decision: str, logits: np.ndarray, features: np.ndarray, bank: np.ndarray,
                    bank_codes: np.ndarray | None, k: int) -> np.ndarray:
    """The head's ``logits`` (``"head"``) or the ``"knn"`` decision's log vote shares among ``bank``."""
    if decision == "head":
        return logits
    return knn_decision_logits(features, bank, bank_codes, logits.shape[1], k)


def _rna_only_calibration(model: Any, network: TeacherClassifier, data: ad.AnnData, domains: np.ndarray,
                          bank_rows: np.ndarray, bank_codes: np.ndarray, decision: str, held_rows: np.ndarray,
                          codes: np.ndarray, false_rejection_rate: float, knn_k: int, min_overlap: float, device: str,
                          genes: list[str] | None = None) -> tuple[np.ndarray, Calibration]:
    """The feature bank and calibration of the labeled cells seen from RNA alone (proteins hidden), each
    source with batch-norm statistics estimated on its RNA-only cells (as an RNA-only query gets); only
    ``genes`` are read (``None``: all)."""
    prepared = model._prepare(data, batch_key=None, min_overlap=min_overlap, what="the labeled data",
                              use_protein=False)
    prepared.cells = read_only_genes(model, prepared.cells, genes)
    prepared.cells.domains = network.n_domains + np.asarray(domains, dtype=np.int64)
    adapt = sorted(set(prepared.cells.domains.tolist()))
    rows = np.union1d(bank_rows, held_rows)
    logits, features = classifier_outputs(network, prepared.cells, rows, device=device, adapt_domains=adapt)
    bank = features[np.searchsorted(rows, bank_rows)]
    at = np.searchsorted(rows, held_rows)
    held_logits = decision_logits(decision, logits[at], features[at], bank, bank_codes, knn_k)
    return bank, calibration_of(held_logits, features[at], codes[held_rows], bank, false_rejection_rate, knn_k)


def _expression_opinion(model: Any, cells: Any, bank_rows: np.ndarray, bank_codes: np.ndarray, held_rows: np.ndarray,
                        codes: np.ndarray, held_posterior: np.ndarray
                        ) -> tuple[ExpressionOpinion | None, np.ndarray | None]:
    """The expression vote fitted on the held-out cells (:func:`fit_expression_opinion`; ``held_posterior``: the
    classifier's calibrated posterior of them) and the bank cells in the expression space; ``(None, None)`` when
    the model keeps no expression space or there is nothing to fit on."""
    space = expression_space_of(model)
    if space is None or held_rows.size == 0:
        log.info("The classifier's posterior is not pooled with an expression vote: %s.",
                 "the model keeps no expression space" if space is None else "no held-out cells")
        return None, None
    fitted = fit_expression_opinion(space, cells, bank_rows, bank_codes, held_rows, codes[held_rows], held_posterior)
    return (None, None) if fitted is None else fitted


def _calibrate(network: TeacherClassifier, bank: np.ndarray, bank_codes: np.ndarray, decision: str, cells: Any,
               held_rows: np.ndarray, codes: np.ndarray, false_rejection_rate: float, knn_k: int, device: str
               ) -> tuple[Calibration, np.ndarray]:
    """Temperature, ECE before/after, held-out score distributions and the thresholds of every score, of the
    ``decision``'s logits on the held-out cells (never in the feature bank); and those logits."""
    if held_rows.size == 0:
        empty = np.empty((0, 0))
        return calibration_of(empty, empty, codes[:0], bank, false_rejection_rate, knn_k), empty
    logits, features = classifier_outputs(network, cells, held_rows, device=device)
    logits = decision_logits(decision, logits, features, bank, bank_codes, knn_k)
    return calibration_of(logits, features, codes[held_rows], bank, false_rejection_rate, knn_k), logits


def calibration_of(logits: np.ndarray, features: np.ndarray, y: np.ndarray, bank: np.ndarray,
                   false_rejection_rate: float, knn_k: int) -> Calibration:
    """Calibration of held-out outputs (``logits``, ``features``, true codes ``y``) against ``bank``."""
    if y.size == 0:
        return Calibration(1.0, {"max_softmax": 0.0, "max_softmax_log_odds": None, "knn": None, "combined": None})
    temperature = fit_temperature(logits, y)
    log_odds = top_class_log_odds(logits, temperature)
    familiarity = feature_knn_similarity(features, bank, knn_k)
    quantiles = {"log_odds": score_quantiles(log_odds).tolist(),
                 "familiarity": score_quantiles(familiarity).tolist()}
    typicality = _typicality(log_odds, familiarity, quantiles)
    log_odds_cut = rejection_threshold(log_odds, false_rejection_rate)
    report = {"n_cells": int(y.size),
              "accuracy": float((logits.argmax(1) == y).mean()),
              "ece_before": expected_calibration_error(scaled_probabilities(logits), y),
              "ece_after": expected_calibration_error(scaled_probabilities(logits, temperature), y),
              "false_rejection_rate": float(false_rejection_rate)}
    return Calibration(temperature,
                       {"max_softmax": float(expit(log_odds_cut)), "max_softmax_log_odds": log_odds_cut,
                        "knn": rejection_threshold(familiarity, false_rejection_rate),
                        "combined": rejection_threshold(typicality, false_rejection_rate)},
                       quantiles, report)


def cross_validate(model_cls: type, adata: ad.AnnData, label_key: str, folds: int = 5, batch_key: str | None = None,
                   pretrain: bool = True, seed: int = 0, model_kwargs: dict | None = None,
                   pretrain_kwargs: dict | None = None, device: str = "auto", progress: bool = False,
                   **classifier_kwargs: Any) -> pd.DataFrame:
    """Stratified k-fold cross-validation of the classifier on one labeled dataset.

    For each fold, a fresh ``model_cls`` model is built on the training folds, pre-trained on them (unless
    ``pretrain=False``: end-to-end), its classifier fine-tuned, and the held-out fold predicted. Cells without
    a label are never tested.

    Returns
    -------
    pandas.DataFrame
        One row per fold: ``fold``, ``n_train``, ``n_test``, ``accuracy``, ``macro_f1``, ``median_f1``
        (median per-class F1, the paper's headline metric), ``seconds``.
    """
    from sklearn.model_selection import StratifiedKFold

    from ..metrics import annotation_report

    labels = _label_column(adata, label_key)
    labeled = np.flatnonzero(labels.notna().to_numpy())
    if folds < 2:
        raise InputError(f"folds must be at least 2, got {folds}.")
    y = labels.iloc[labeled].astype(str).to_numpy()
    if pd.Series(y).value_counts().max() < folds:
        raise InputError(f"No cell type has {folds} labeled cells; use fewer folds.")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    rows = []
    for fold, (tr, te) in enumerate(splitter.split(np.zeros(y.size), y)):
        start = time.perf_counter()
        train_idx = np.sort(np.concatenate([labeled[tr], np.flatnonzero(labels.isna().to_numpy())]))
        train, test = adata[train_idx].copy(), adata[labeled[te]].copy()
        model = model_cls(train, batch_key=batch_key, label_key=label_key, seed=seed + fold, **(model_kwargs or {}))
        if pretrain:
            model.train(device=device, progress=progress, **(pretrain_kwargs or {}))
        classifier = CellTypeClassifier.fit(model, label_key=label_key, pretrain=pretrain, device=device,
                                            progress=progress, **classifier_kwargs)
        pred = classifier.predict(test, inplace=False, device=device)
        report = annotation_report(y[te], pred.labels.astype(str))
        rows.append({"fold": fold, "n_train": int(train.n_obs), "n_test": int(test.n_obs),
                     **{k: float(v) for k, v in report.items()}, "seconds": time.perf_counter() - start})
    return pd.DataFrame(rows)

def write_prediction(adata: ad.AnnData, result: AnnotationPrediction, extra: dict | None = None) -> None:
    """Write a prediction into ``adata``: ``obs['L_pred'|'L_confidence'|'L_unknown']``, the rejection score
    behind ``L_unknown`` in ``obs['L_unknown_score']``, ``obsm['L_proba']`` (class names in
    ``uns['L_proba_classes']``) and ``uns['scconcerto_annotation']``."""
    key = result.label_key
    cats = list(result.classes) + ([UNKNOWN_LABEL] if UNKNOWN_LABEL not in result.classes else [])
    adata.obs[pred_key(key)] = pd.Categorical(result.labels.astype(str), categories=cats)
    adata.obs[confidence_key(key)] = result.confidence.astype(np.float32)
    adata.obs[unknown_key(key)] = result.unknown.astype(bool)
    adata.obs[unknown_score_key(key)] = np.asarray(result.score, dtype=np.float32)
    if result.known_prob is not None:
        adata.obs[known_key(key)] = result.known_prob
    adata.obsm[f"{key}_proba"] = result.probabilities.astype(np.float32)
    adata.uns[f"{key}_proba_classes"] = np.asarray(result.classes, dtype=object)
    adata.uns["scconcerto_annotation"] = {"label_key": key, "gene_overlap": dict(result.gene_overlap),
                                          **(extra or {})}
