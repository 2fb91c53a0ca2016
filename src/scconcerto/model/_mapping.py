"""Query-to-reference mapping: labels with a calibrated posterior, confidence and unknowns, proteins, placement.

:func:`map_cells` embeds a query in the reference space (:mod:`._query_embedding`: genes aligned by name, AdaBN
per unseen query source, optional fine-tuning of the query sources' adapters), finds each query cell's nearest
reference cells (faiss), and per label key reads the calibrated decision prepared with the reference
(:class:`~scconcerto.mapping.LabelModel`): the posterior of the calibrated vote, the probability that the label is
right and the probability that the cell is of a type the reference has. It imputes the reference's proteins and
places the query on the stored reference UMAP. How it maps is one :class:`MapOptions`. The model is never changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from .._errors import InputError
from .._keys import (EMBEDDING_KEY, IMPUTED_PROTEIN_KEY, IMPUTED_PROTEIN_NAMES_KEY, MAPPING_UNS, REFERENCE_UMAP_KEY,
                     UNKNOWN_LABEL, confidence_key, known_key, pred_key, proba_key, unknown_key)
from ..data.setup import value_scale_summary
from ..data.vocabulary import DEFAULT_MIN_OVERLAP
from ..mapping.hierarchy import parent_labels, within_parent
from ..mapping.label_model import (AGREEMENT_K, MIN_QUERY_CELLS, SEEN_PRIOR, LabelModel, neighbour_labels,
                                   query_features)
from ..mapping.posterior import VotePosterior, adjust_to_query_proportions, label_frequencies
from ..search.neighbors import NeighborsResults, gpu_search_active, knn
from ..tools.imputation import impute_from_neighbors
from ..tools.placement import place_on_reference
from ..train.config import check_seed
from ._query_embedding import embed_query
from ._reference import SCALED_EXPRESSION, MappingState, ReferenceSearch, find_label_model

if TYPE_CHECKING:
    from ..data import DataSetup
    from .storage import ReferenceStore

DEFAULT_IMPUTE_K = 20
#: The plain vote of a label key that could not be calibrated (a single labeled type, too few cells).
_UNCALIBRATED = dict(alpha=0.01, gamma=1.0)


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class MapOptions:
    """How :meth:`ReferenceMapper.map <scconcerto.model.mapper.ReferenceMapper.map>` maps a query: its keyword
    options, checked when made (:class:`~scconcerto.InputError` for a bad value).

    Attributes
    ----------
    batch_key
        ``obs`` column of the query's sources (default: the model's batch key if the query has it); each
        source unseen by the model gets its own AdaBN statistics. ``None``: the query is one source.
    levels
        Label keys from coarse to fine (``["major", "minor"]`` or ``"major,minor"``): each finer label is
        chosen among those belonging to the coarser label predicted for the cell.
    reject
        Write ``"unknown"`` into ``L_pred`` for unknown cells (otherwise only ``L_unknown`` flags them).
    unknown_threshold
        ``L_known_prob`` below which a cell is unknown (a number, or one per label key); default: the value
        that 5 % of held-out reference cells fall below.
    known_share
        The share of the query's cells expected to be of types the reference has: the prior of
        ``L_known_prob`` (and so of ``L_confidence``). Default: even odds, 0.5
        (:data:`scconcerto.mapping.label_model.SEEN_PRIOR`, chosen on development data: ``docs/mapping.md``).
        It moves the probabilities, not the default unknown flags: raise it for a query of the reference's
        types (``L_confidence`` then reads closer to the share of right labels).
    adjust_proportions
        Move each posterior's prior from the reference's label proportions to the query's own, estimated
        by EM (bounded: at most half-way; queries of at least 30 cells), for a query whose cell-type mix
        differs strongly from the reference's.
    use_protein
        ``"auto"``: use the query's proteins when it has the model's panel. Without them the query is
        searched against the RNA-only reference embedding.
    impute
        Impute the reference's proteins (mean of the ``impute_k`` nearest reference cells).
    place
        Place the query on the reference UMAP stored with the model (when it has one).
    finetune_epochs
        Epochs of unsupervised contrastive fine-tuning of the query sources' adapters (their DSBN scale
        and shift) from the reference weights. ``0``: AdaBN only.
    label_shift
        Balance the AdaBN statistics of unseen query sources for their predicted cell-type composition,
        so that a query richer or poorer in some types than the reference keeps that biology (needs a
        reference label key; not used with fine-tuning). ``False``: plain AdaBN.
    k
        Neighbours that vote for each cell's label, in the embedding and (at most 20) in the expression space
        (default: those the decision was calibrated with, 5).
    impute_k
        Neighbours averaged for imputation.
    index
        ``"auto"`` (exact ``"flat"``, approximate ``"ivf"`` for large references: see
        :func:`scconcerto.search.index_kind`), ``"flat"``, ``"ivf"`` or ``"hnsw"``. With a GPU ``device`` every
        search is exact, on the GPU.
    min_overlap
        Minimum fraction of the model's genes the query must have.
    batch_size, device
        Inference settings.
    seed
        Seed of fine-tuning and of the density ratios' subsamples (default: the model's).
    finetune_options
        Other :class:`~scconcerto.train.TrainConfig` fields for fine-tuning (``lr``, ``batch_size``...).
    query_species
        ``"human"`` or ``"mouse"`` when the query is of another species than the model: genes are
        matched through 1:1 orthologs (:mod:`scconcerto.data.genes`). ``None``: the model's species.
        Either way Ensembl ids, versions and letter case are harmonised, and the genes matched by each
        rule are in ``uns['scconcerto_mapping']['gene_overlap']``.
    """

    batch_key: str | None = "__setup__"
    levels: str | list[str] | tuple[str, ...] | None = ()
    reject: bool = False
    unknown_threshold: float | dict[str, float] | None = None
    known_share: float | None = None
    adjust_proportions: bool = False
    use_protein: bool | str = "auto"
    impute: bool = True
    place: bool = True
    finetune_epochs: int = 0
    label_shift: bool = True
    k: int | None = None
    impute_k: int = DEFAULT_IMPUTE_K
    index: str = "auto"
    min_overlap: float = DEFAULT_MIN_OVERLAP
    batch_size: int = 1024
    device: str = "auto"
    seed: int | None = None
    finetune_options: dict | None = None
    query_species: str | None = None

    def __post_init__(self) -> None:
        levels = self.levels
        if levels is None:
            levels = ()
        elif isinstance(levels, str):
            levels = tuple(s.strip() for s in levels.split(",") if s.strip())
        object.__setattr__(self, "levels", tuple(str(s) for s in levels))
        if len(set(self.levels)) != len(self.levels):
            raise InputError(f"levels {list(self.levels)} name a label key twice; give each level once, coarse to "
                             "fine.")
        if self.k is not None and not _positive_int(self.k):
            raise InputError(f"k must be a positive number of neighbours, got {self.k!r}.")
        if not isinstance(self.finetune_epochs, (int, np.integer)) or self.finetune_epochs < 0:
            raise InputError(f"finetune_epochs must be 0 or more, got {self.finetune_epochs}.")
        if self.impute and not _positive_int(self.impute_k):
            raise InputError(f"impute_k must be at least 1, got {self.impute_k}.")
        if not _positive_int(self.batch_size):
            raise InputError(f"batch_size must be a positive number of cells, got {self.batch_size!r}.")
        thresholds = self.unknown_threshold.values() if isinstance(self.unknown_threshold, dict) else \
            [] if self.unknown_threshold is None else [self.unknown_threshold]
        for threshold in thresholds:
            if not 0.0 <= float(threshold) <= 1.0:
                raise InputError(f"The unknown threshold is a probability in [0, 1], got {float(threshold)}.")
        if self.known_share is not None and not (isinstance(self.known_share, (int, float, np.number))
                                                 and 0.0 < float(self.known_share) < 1.0):
            raise InputError(f"known_share is the share of query cells expected to be of known types, strictly "
                             f"between 0 and 1; got {self.known_share!r}.")
        if self.seed is not None:
            check_seed(self.seed)

    @classmethod
    def of(cls, options: "MapOptions | None" = None, **kwargs: Any) -> "MapOptions":
        """``options`` (default: the defaults) with the fields named in ``kwargs`` replaced."""
        unknown = sorted(set(kwargs) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"Unknown mapping option(s) {unknown}; the options are "
                            f"{[f.name for f in fields(cls)]}.")
        options = cls() if options is None else options
        return replace(options, **kwargs) if kwargs else options

    @property
    def seen_prior(self) -> float:
        """The prior probability of a seen type (:attr:`known_share`, else the package's)."""
        return SEEN_PRIOR if self.known_share is None else float(self.known_share)

    def threshold(self, key: str, default: float) -> float:
        """The unknown threshold of label key ``key`` (``default``: the calibrated one)."""
        if isinstance(self.unknown_threshold, dict):
            return float(self.unknown_threshold.get(key, default))
        return default if self.unknown_threshold is None else float(self.unknown_threshold)


@dataclass
class MappingResult:
    """What :meth:`ReferenceMapper.map <scconcerto.model.mapper.ReferenceMapper.map>` computed (also written into the query AnnData).

    Attributes
    ----------
    embedding
        ``(n_query, out_dim)`` query embedding in the reference space.
    predictions
        Per label key, a DataFrame (query ``obs_names``) with ``pred``, ``confidence`` (probability that the
        label is right), ``known_prob`` (probability that the type is one the reference has) and ``unknown``.
    probabilities
        Per label key, the ``(n_query, n_labels)`` posterior (columns: ``classes[key]``).
    classes
        Per label key, the label names of the posterior's columns.
    protein_imputed
        ``(n_query, n_proteins)`` imputed normalized proteins, or ``None``.
    umap
        ``(n_query, 2)`` coordinates on the reference UMAP, or ``None``.
    neighbors
        The query cells' nearest reference cells (the label vote's candidates).
    info
        What is written to ``uns['scconcerto_mapping']``.
    """

    embedding: np.ndarray
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    classes: dict[str, list[str]] = field(default_factory=dict)
    protein_imputed: np.ndarray | None = None
    umap: np.ndarray | None = None
    neighbors: NeighborsResults | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"MappingResult({self.embedding.shape[0]} cells, labels {list(self.predictions)}, "
                f"proteins={'yes' if self.protein_imputed is not None else 'no'}, "
                f"umap={'yes' if self.umap is not None else 'no'})")


def _nearest(neighbors: NeighborsResults, k: int) -> NeighborsResults:
    """The ``k`` nearest of a search for more (faiss returns them best first)."""
    if neighbors.n_neighbors == k:
        return neighbors
    return NeighborsResults(indices=neighbors.indices[:, :k], similarities=neighbors.similarities[:, :k])



def map_cells(model: Any, state: MappingState, search: ReferenceSearch, adata: ad.AnnData,
              options: MapOptions) -> MappingResult:
    """Map ``adata`` onto the reference of ``model`` and write the result into it (``options.seed`` resolved)."""
    o, setup = options, model.setup
    wrong = [key for key in o.levels if key not in setup.labels]
    if wrong:
        raise InputError(f"levels {wrong} are not label keys of the reference (it has "
                         f"{list(setup.labels)}). Train the reference with these label keys.")
    level_keys = list(o.levels)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    shift_info: dict[str, Any] = {}
    embedding, prepared, space = embed_query(model, search, adata, o, timings, info=shift_info)
    decisions = {key: find_label_model(state, key, space) for key in setup.labels}
    stored_k = state.k if state.k else 20
    ks = {key: int(o.k or (m.posterior.k if m is not None else stored_k)) for key, m in decisions.items()}

    # -- neighbours in the reference
    t0 = time.perf_counter()
    ref_emb = search.embedding(space)
    kind = search.kind(space, len(ref_emb), len(embedding), o.index)
    imputing = o.impute and model.reference.protein is not None
    k_search = int(min(max([*ks.values(), o.impute_k if imputing else 1, 1]), len(ref_emb)))
    searched = knn(embedding, search.index(space, ref_emb, kind, o.seed), k=k_search)
    timings["knn"] = time.perf_counter() - t0

    # -- labels, confidence, unknowns
    t0 = time.perf_counter()
    expression = query_expression_neighbors(search, decisions, prepared.cells, o.index, o.seed)
    proportions: dict[str, Any] = {}
    out = decide_labels(setup, model.reference, decisions, ks, searched, embedding, ref_emb, expression, level_keys,
                        o.adjust_proportions, o.seed, groups=prepared.cells.domains, proportions=proportions,
                        seen_prior=o.seen_prior)
    predictions, probabilities, thresholds = {}, {}, {}
    for key, (posterior, p_right, p_known, threshold_default) in out.items():
        threshold = o.threshold(key, threshold_default)
        unknown = p_known < threshold
        names = np.asarray(setup.labels[key], dtype=object)
        cats = list(names)
        pred = names[posterior.argmax(axis=1)]
        if o.reject:
            pred = np.where(unknown, UNKNOWN_LABEL, pred)
            cats = cats + [UNKNOWN_LABEL] if UNKNOWN_LABEL not in cats else cats
        frame = pd.DataFrame({"pred": pd.Categorical(pred, categories=cats),
                              "confidence": (p_right * p_known).astype(np.float32),
                              "known_prob": p_known.astype(np.float32), "unknown": unknown},
                             index=adata.obs_names.copy())
        predictions[key], probabilities[key], thresholds[key] = frame, posterior.astype(np.float32), threshold
    timings["labels"] = time.perf_counter() - t0

    # -- proteins, placement
    info: dict[str, Any] = {}
    imputed = None
    if imputing:
        t0 = time.perf_counter()
        k_imp = int(min(o.impute_k, len(ref_emb)))
        imputed = impute_from_neighbors(_nearest(searched, k_imp), model.reference.protein)
        info.update({"protein_names": list(setup.proteins), "impute_k": k_imp})
        timings["impute"] = time.perf_counter() - t0
    coords = None
    umap = model.reference.umap if o.place else None
    if umap is not None:
        t0 = time.perf_counter()
        coords = place_on_reference(_nearest(searched, min(15, k_search)), np.asarray(umap, dtype=np.float32))
        timings["place"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start

    info.update({"gene_overlap": prepared.alignment.summary(), "values": value_scale_summary(prepared, setup),
                 "k": ks, "index": kind,
                 "search_on": "gpu" if gpu_search_active() else "cpu", "space": space,
                 "with_protein": prepared.cells.protein is not None, "n_reference": int(len(ref_emb)),
                 "classes": {key: [str(c) for c in setup.labels[key]] for key in setup.labels},
                 "thresholds": {key: round(float(v), 6) for key, v in thresholds.items()},
                 "known_share": float(o.seen_prior),
                 "calibrated": {key: m is not None for key, m in decisions.items()},
                 "reject": bool(o.reject), "finetune_epochs": int(o.finetune_epochs),
                 "adjust_proportions": bool(o.adjust_proportions),
                 "timings": {name: round(v, 4) for name, v in timings.items()}})
    if level_keys:
        info["levels"] = level_keys
    if proportions:
        info["label_proportions"] = proportions
    adapted = prepared.source_names if o.finetune_epochs > 0 else prepared.unseen_sources
    if adapted:
        info["adabn_sources"] = [str(s) for s in adapted]
        info["adabn"] = {"balanced": True, **shift_info["label_shift"]} if shift_info else {"balanced": False}
    result = MappingResult(embedding=embedding, predictions=predictions, probabilities=probabilities,
                           classes=info["classes"], protein_imputed=imputed, umap=coords,
                           neighbors=_nearest(searched, min(ks.values()) if ks else k_search), info=info)
    write_mapping(adata, result, setup.proteins)
    return result


def known_probability(model: Any, state: MappingState, search: ReferenceSearch, adata: ad.AnnData, label_key: str,
                      options: MapOptions) -> tuple[np.ndarray, float]:
    """``P(seen type)`` of each cell under ``label_key`` and the default unknown threshold, as :func:`map_cells`
    would compute them (``options.seed`` resolved)."""
    embedding, prepared, space = embed_query(model, search, adata, options, {})
    decision = find_label_model(state, label_key, space)
    if decision is None:
        raise InputError(f"The label decision of {label_key!r} is not calibrated (see the training log), so "
                         "there is no novelty model for it.")
    ref_emb = search.embedding(space)
    k = int(min(decision.posterior.k, len(ref_emb)))
    kind = search.kind(space, len(ref_emb), len(embedding), "auto")
    searched = knn(embedding, search.index(space, ref_emb, kind, options.seed), k=k)
    expression = query_expression_neighbors(search, {label_key: decision}, prepared.cells, "auto", options.seed)
    out = decide_labels(model.setup, model.reference, {label_key: decision}, {label_key: k}, searched, embedding,
                        ref_emb, expression, [], False, options.seed, keys=[label_key], groups=prepared.cells.domains,
                        seen_prior=options.seen_prior)
    return out[label_key][2], out[label_key][3]


def query_expression_neighbors(search: ReferenceSearch, decisions: dict[str, LabelModel | None], cells: Any,
                               index: str, seed: int) -> tuple[np.ndarray, np.ndarray, NeighborsResults] | None:
    """The query and reference cells in the scaled expression space and each query cell's nearest reference
    cells there, when a label decision reads that space."""
    if not any(m is not None and m.uses_expression for m in decisions.values()):
        return None
    scaled = search.scaled()
    if scaled is None:
        raise InputError("The model's label decision reads the reference's expression space, which the model "
                         "no longer holds; run `model.prepare_mapping(reference_adata, overwrite=True)`.")
    ref_expr, space = scaled
    query_expr = space.project(cells)
    kind = search.kind(SCALED_EXPRESSION, len(ref_expr), len(query_expr), index)
    found = knn(query_expr, search.index(SCALED_EXPRESSION, ref_expr, kind, seed), k=min(AGREEMENT_K, len(ref_expr)))
    return query_expr, ref_expr, found


def decide_labels(setup: "DataSetup", reference: "ReferenceStore", decisions: dict[str, LabelModel | None],
                  ks: dict[str, int], searched: NeighborsResults, embedding: np.ndarray, ref_emb: np.ndarray,
                  expression: tuple[np.ndarray, np.ndarray, NeighborsResults] | None, level_keys: list[str],
                  adjust_proportions: bool, seed: int, keys: list[str] | None = None,
                  groups: np.ndarray | None = None, proportions: dict | None = None,
                  seen_prior: float = SEEN_PRIOR) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Per label key (default: all) of the calibrated ``decisions``: the posterior, ``P(right | seen)``, ``P(seen)``
    (at the prior ``seen_prior`` of a seen type) and the default threshold; with ``adjust_proportions``, the
    estimated query proportions go into ``proportions``."""
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
    sims, idx = searched.similarities, searched.indices
    coarse_pred: dict[str, np.ndarray] = {}
    keys = list(setup.labels) if keys is None else keys
    ordered = level_keys + [key for key in keys if key not in level_keys]
    for key in ordered:
        decision, k_key = decisions[key], ks[key]
        codes = reference.labels[key]
        n_labels = len(setup.labels[key])
        vote_model = decision.posterior if decision is not None else VotePosterior(
            prior=label_frequencies(codes, n_labels), k=k_key, **_UNCALIBRATED)
        vote_model = replace(vote_model, k=min(k_key, idx.shape[1]))
        expr_labels = None if expression is None else neighbour_labels(expression[2].indices, codes)
        if decision is None:
            posterior = vote_model.posterior(sims, codes[idx])
        else:
            in_expression = None if expression is None else (expression[2].similarities, expr_labels)
            posterior = decision.label_posterior(sims, codes[idx], in_expression, k=vote_model.k)
        if adjust_proportions and len(embedding) >= MIN_QUERY_CELLS:
            posterior, estimated = adjust_to_query_proportions(posterior, vote_model.prior)
            if proportions is not None:
                shown = np.flatnonzero((estimated > 1e-3) | (vote_model.prior > 1e-3))
                # lists, not dicts keyed by label: label names may hold "/", which h5ad reads as a path
                proportions[key] = {"labels": [str(setup.labels[key][c]) for c in shown],
                                    "estimated": np.round(estimated[shown], 4).tolist(),
                                    "reference": np.round(vote_model.prior[shown], 4).tolist()}
        position = level_keys.index(key) if key in level_keys else -1
        if position > 0:
            parent_key = level_keys[position - 1]
            parents = parent_labels(codes, reference.labels[parent_key], n_labels,
                                    len(setup.labels[parent_key]))
            posterior = within_parent(posterior, parents, coarse_pred[parent_key])
        if key in level_keys:
            coarse_pred[key] = posterior.argmax(axis=1)
        if decision is None:
            ones = np.ones(len(posterior))
            out[key] = (posterior, posterior.max(axis=1), ones, 0.0)
            continue
        expr = None if expression is None else (expression[0], expression[1], expr_labels)
        # the embedding's own vote, apart from the pooled posterior, only for a decision that reads it
        own_vote = vote_model.posterior(sims, codes[idx]) if decision.reads_embedding_support else None
        features = query_features(sims[:, :vote_model.k], posterior, embedding, ref_emb, expr, groups=groups,
                                  embedding_posterior=own_vote, seed=seed)
        p_right, p_known, _, threshold = decision.decide(features, posterior, seen_prior)
        out[key] = (posterior, p_right, p_known, threshold)
    return {key: out[key] for key in keys}


def write_mapping(adata: ad.AnnData, result: MappingResult, protein_names: list[str]) -> None:
    """Write the result into the query AnnData under the stable names of :mod:`scconcerto._keys`."""
    adata.obsm[EMBEDDING_KEY] = result.embedding
    for key, frame in result.predictions.items():
        adata.obs[pred_key(key)] = frame["pred"].to_numpy()
        adata.obs[pred_key(key)] = adata.obs[pred_key(key)].astype(frame["pred"].dtype)
        adata.obs[confidence_key(key)] = frame["confidence"].to_numpy()
        adata.obs[known_key(key)] = frame["known_prob"].to_numpy()
        adata.obs[unknown_key(key)] = frame["unknown"].to_numpy()
        adata.obsm[proba_key(key)] = result.probabilities[key]
    if result.protein_imputed is not None:
        adata.obsm[IMPUTED_PROTEIN_KEY] = result.protein_imputed
        adata.uns[IMPUTED_PROTEIN_NAMES_KEY] = list(protein_names)
    if result.umap is not None:
        adata.obsm[REFERENCE_UMAP_KEY] = result.umap
    adata.uns[MAPPING_UNS] = result.info
