"""Query-to-reference mapping (label transfer, confidence, imputation, hierarchy).

:meth:`MappingMixin.map_query` embeds a query in the reference space (genes
aligned by name, AdaBN per unseen query source, optional fine-tuning of the
query sources' adapters), finds each query cell's k nearest reference cells
(faiss), votes their labels (flat or hierarchical), asks the reference's
expression spaces for a second opinion (a blend into contested votes, a veto
where unanimous, a rare label's claim where it holds a majority), scores each
transfer with a confidence calibrated on the reference, imputes the
reference's proteins, and places the query on the stored reference UMAP.

What mapping needs of the reference is prepared once by
:meth:`MappingMixin.prepare_mapping` (or lazily on the first map) and saved
with the model: confidence models, unknown thresholds and the second
opinion's weight in ``extra_config['mapping']``, the reference UMAP
(``reference.extra['umap']``) and, for RNA + protein models, the RNA-only
reference embedding (``reference.extra['embedding_rna']``) against which
RNA-only queries are searched. Training stores the reference in its
expression space (``reference.extra['expression']``, 50 float32 per cell,
and the loadings that project a query there); preparing the mapping adds its
scaled expression space (``reference.extra['scaled_expression']``, 50 float32
per cell, :mod:`scconcerto.data.scaled_space`).
"""

from __future__ import annotations

import copy
import functools
import logging
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from .._errors import InputError
from ..data.scaled_space import ScaledSpace, fit_scaled_space
from ..data.vocabulary import DEFAULT_MIN_OVERLAP
from ..tools.confidence import MIN_QUERY_CELLS, ConfidenceModel, calibrate_confidence, centred_on, density_ratio, \
    expression_centres, expression_features, neighborhood_features
from ..tools.hierarchy import hierarchical_transfer, with_neighbors_of_labels
from ..tools.imputation import impute_from_neighbors
from ..nn.dsbn import MIN_ADAPT_CELLS
from ..tools.label_shift import balancing_weights, subsample_per_group, weighted_moments
from ..tools.label_transfer import (LabelTransfer, adjust_to_proportions, contested_rows, label_counts,
                                   overrule, rare_labels, second_opinion, vote)
from ..tools.neighbors import (NeighborsResults, build_index, gpu_search_active, ivf_centroids, knn,
                               searches_on_its_device)
from ..tools.placement import place_on_reference
from ..tools.placement import reference_umap as umap_of_embedding

if TYPE_CHECKING:
    from ..data.setup import PreparedCells
    from ..nn import ConcertoNetwork

log = logging.getLogger("scconcerto")

MAPPING_CONFIG = "mapping"
MAPPING_UNS = "scconcerto_mapping"
UMAP_EXTRA = "umap"
IVF_CENTROIDS_EXTRA = "ivf_centroids"
RNA_EMBEDDING_EXTRA = "embedding_rna"
EXPRESSION_LOADINGS_EXTRA = "expression_loadings"  # genes x c: the reference's expression space (SVD)
EXPRESSION_SAMPLE_EXTRA = "expression_sample"  # <= 10k reference cells in that space, for the confidence
EXPRESSION_EXTRA = "expression"  # every reference cell in that space (n_ref x c float32), for the second opinion
SCALED_EXPRESSION_EXTRA = "scaled_expression"  # every reference cell in the scaled expression space (n_ref x c)
SCALED_LOADINGS_EXTRA = "scaled_expression_loadings"  # genes x c (:class:`~scconcerto.data.scaled_space.ScaledSpace`)
SCALED_OFFSET_EXTRA = "scaled_expression_offset"  # c
SCALED_CAPS_EXTRA = "scaled_expression_caps"  # genes: clipping values
SCALED_EXTRAS = (SCALED_EXPRESSION_EXTRA, SCALED_LOADINGS_EXTRA, SCALED_OFFSET_EXTRA, SCALED_CAPS_EXTRA)
#: Weight of the expression space's vote, added to the embedding's vote shares of contested cells
#: (:func:`~scconcerto.tools.label_transfer.blend_votes`). Fixed at 0.5 before it was measured. Benchmark label
#: transfer, ACC / macro-F1: symphony 3pv1 0.928 / 0.771 -> 0.934 / 0.795, 3pv2 0.910 / 0.816 -> 0.915 / 0.824,
#: Kang 0.771 -> 0.780, 5p 0.972 / 0.826 -> 0.970 / 0.822, the other splits unchanged; at weight 1, rare types
#: lost (3pv1 macro-F1 0.742, 5p 0.756). The same vote, when unanimous, also overrules the embedding's winner
#: (``veto_rows``; mapping config version 3): over seeds 0-2, 7 splits, mean ACC / macro-F1 0.936 / 0.863 ->
#: 0.940 / 0.869 (pancreas Xin query 0.963 -> 0.981 on average).
DEFAULT_EXPRESSION_VOTE = 0.5
EXPRESSION_SAMPLE_CELLS = 10_000
#: A label with fewer reference cells (and at least 2) claims a query cell when it holds at least half of its vote in
#: the scaled expression space (:func:`~scconcerto.tools.label_transfer.rare_label_rows`). Over seeds 0-2 and 7
#: label-transfer splits (offline, same models, that space's vote also blended in), 10, 20, 50 and 100 gave mean
#: macro-F1 0.909-0.911 against 0.869 without either; 200 gave 0.882.
RARE_LABEL_CELLS = 20
#: The rules a confidence calibrated now was calibrated with. Version 2 added ``expression_vote`` (configs of
#: version 1 were calibrated without the second opinion), version 3 ``expression_veto`` (configs of version 2
#: were calibrated without the veto), version 4 the scaled expression space (the blend and the rare labels'
#: claim) and ``rare_label_cells``; what a config lacks is off.
CALIBRATION_RULES = {"version": 4, "expression_veto": True, "rare_label_cells": RARE_LABEL_CELLS}
UMAP_KEY = "X_umap_ref"
IMPUTED_PROTEIN_KEY = "protein_imputed"
DEFAULT_IMPUTE_K = 20
UNKNOWN_LABEL = "unknown"
FULL, RNA_ONLY = "full", "rna_only"
#: The last faiss index built for each model and space (not saved, not copied with the model).
_INDEX_CACHE: "weakref.WeakKeyDictionary[Any, dict[str, tuple]]" = weakref.WeakKeyDictionary()
#: References of at least this many cells are searched with an approximate (IVF) index by ``index='auto'``.
APPROXIMATE_FROM = 1_000_000
#: ... and from this many reference cells when the query times the reference exceeds ``APPROXIMATE_WORK`` pairs:
#: on one CPU thread an exact search of 20k queries among 100k cells took 5.0 s, building an IVF index 3.4 s
#: and searching it 0.9 s.
APPROXIMATE_MIN_REFERENCE = 100_000
APPROXIMATE_WORK = 2e9
#: Query cells per unseen source whose predicted types balance its AdaBN statistics (a seeded sample above it).
LABEL_SHIFT_CELLS = 20_000
#: Rounds of predict-then-reweight (benchmark label-transfer splits: the second round added up to 0.002 ACC,
#: a third nothing).
LABEL_SHIFT_ROUNDS = 2
#: Reference cells (a seeded sample above it) searched in the predict-and-reweight rounds: composition
#: estimates need no exhaustive search (10k queries among 100k cells: 2.5 s a round exact, 0.5 s among 20k).
LABEL_SHIFT_REFERENCE_CELLS = 20_000


@dataclass
class MappingResult:
    """What :meth:`MappingMixin.map_query` computed (also written into the query AnnData).

    Attributes
    ----------
    embedding
        ``(n_query, out_dim)`` query embedding in the reference space.
    predictions
        Per label key, a DataFrame (query ``obs_names``) with ``pred``, ``confidence``, ``unknown``.
    protein_imputed
        ``(n_query, n_proteins)`` imputed normalized proteins, or ``None``.
    umap
        ``(n_query, 2)`` coordinates on the reference UMAP, or ``None``.
    neighbors
        The query cells' neighbours among the reference cells (first level).
    info
        What is written to ``uns['scconcerto_mapping']``.
    """

    embedding: np.ndarray
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    protein_imputed: np.ndarray | None = None
    umap: np.ndarray | None = None
    neighbors: NeighborsResults | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"MappingResult({self.embedding.shape[0]} cells, labels {list(self.predictions)}, "
                f"proteins={'yes' if self.protein_imputed is not None else 'no'}, "
                f"umap={'yes' if self.umap is not None else 'no'})")


def _levels_list(levels: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if levels is None:
        return []
    if isinstance(levels, str):
        return [s.strip() for s in levels.split(",") if s.strip()]
    return [str(s) for s in levels]


def index_kind(n_reference: int, n_query: int, index: str = "auto") -> str:
    """The faiss index of a search: ``index`` unless ``"auto"``, which is exact (``"flat"``) except for references
    of ``APPROXIMATE_FROM`` cells, or of ``APPROXIMATE_MIN_REFERENCE`` cells searched by enough queries that the
    exact search costs more than building and searching an IVF index (``"ivf"``)."""
    if index != "auto":
        return index
    large = n_reference >= APPROXIMATE_MIN_REFERENCE and n_reference * n_query >= APPROXIMATE_WORK
    return "ivf" if n_reference >= APPROXIMATE_FROM or large else "flat"


def _with_new_domains(prepared: "PreparedCells", n_known: int, all_new: bool) -> tuple["PreparedCells", list[int]]:
    """Give every query source its own new domain id when ``all_new``; list the ids that need AdaBN."""
    cells = prepared.cells
    if all_new:
        _, codes = np.unique(cells.domains, return_inverse=True)
        cells = replace(cells, domains=(codes + n_known).astype(np.int64))
        prepared = replace(prepared, cells=cells)
    new = sorted(set(np.unique(cells.domains[cells.domains >= n_known]).tolist()))
    return prepared, new


class MappingMixin:
    """Query-to-reference mapping (label transfer, confidence, imputation, hierarchy). Mixed into :class:`~scconcerto.model.Concerto`."""

    # ------------------------------------------------------------------ preparing the reference
    def _mapping_config(self) -> dict:
        return self.extra_config.setdefault(MAPPING_CONFIG, {"confidence": {}, **CALIBRATION_RULES,
                                                             "expression_vote": DEFAULT_EXPRESSION_VOTE})

    def _expression_vote(self) -> float:
        """The weight of the expression space's second opinion the confidence was calibrated with (0: none)."""
        return float(self._mapping_config().get("expression_vote", 0.0))

    def _expression_veto(self) -> bool:
        """Whether a unanimous expression-space vote overrules the embedding's (with the second opinion on)."""
        return self._expression_vote() > 0 and bool(self._mapping_config().get("expression_veto", False))

    def _scaled_expression(self, adata: ad.AnnData | None = None) -> tuple[np.ndarray, ScaledSpace] | None:
        """The reference cells in its scaled expression space and that space, when the mapping rules use it.

        Configs of version 4 use it (with the second opinion on) when the reference had one at calibration
        (``extra_config['mapping']['scaled_expression']``, decided once): stored in ``reference.extra``,
        else fitted on the reference AnnData (``adata``, else the one the model holds).
        """
        cfg = self._mapping_config()
        if int(cfg.get("version", 1)) < 4 or self._expression_vote() <= 0:
            return None
        if "scaled_expression" not in cfg:
            cfg["scaled_expression"] = self._reference_scaled_expression(adata) is not None
        if not cfg["scaled_expression"]:
            return None
        found = self._reference_scaled_expression()
        if found is None:
            raise InputError("The mapping confidence was calibrated with the reference's scaled expression space, "
                             "which the model no longer holds; re-run `model.prepare_mapping(overwrite=True)`.")
        return found

    def _rare_label_cells(self, scaled: tuple[np.ndarray, ScaledSpace] | None) -> int:
        """Labels with fewer reference cells may claim cells (the config's limit); 0 without the scaled space."""
        return int(self._mapping_config().get("rare_label_cells", 0)) if scaled is not None else 0

    def _reference_scaled_expression(self, adata: ad.AnnData | None = None
                                     ) -> tuple[np.ndarray, ScaledSpace] | None:
        """The stored scaled expression space (:mod:`scconcerto.data.scaled_space`), else fitted on the
        in-memory reference AnnData (``adata``, else the model's) and stored; ``None`` without either."""
        extra = self.reference.extra
        if SCALED_EXPRESSION_EXTRA in extra and len(extra[SCALED_EXPRESSION_EXTRA]) == len(self.reference.embedding):
            space = ScaledSpace(*(np.asarray(extra[name], dtype=np.float32)
                                  for name in (SCALED_LOADINGS_EXTRA, SCALED_OFFSET_EXTRA, SCALED_CAPS_EXTRA)))
            return np.asarray(extra[SCALED_EXPRESSION_EXTRA], dtype=np.float32), space
        adata = adata if adata is not None else getattr(self, "adata", None)
        if adata is None or adata.n_obs != len(self.reference.embedding):
            return None
        cells = self._prepare(adata, what="the reference").cells
        if cells.on_disk:
            return None
        fitted = self._fit_scaled_expression(cells, self.reference.labels, self.seed)
        if fitted is not None:
            self._store_scaled_expression(*fitted)
        return fitted

    def _fit_scaled_expression(self, cells: Any, label_codes: dict[str, np.ndarray], seed: int
                               ) -> tuple[np.ndarray, ScaledSpace] | None:
        """The in-memory reference ``cells`` in a scaled expression space fitted on them (every cell of a
        label with fewer than :data:`RARE_LABEL_CELLS` cells among the fitted ones), and that space;
        ``None`` when there is nothing to fit (e.g. a single varying gene)."""
        rare = [np.flatnonzero((codes >= 0) & (label_counts(codes, len(self.setup.labels[key]))[np.maximum(codes, 0)]
                                               < RARE_LABEL_CELLS)) for key, codes in label_codes.items()]
        try:
            space = fit_scaled_space(cells, seed=seed, keep_rows=np.concatenate(rare) if rare else None)
        except ValueError as exc:
            log.info("No scaled expression space for the reference (%s).", exc)
            return None
        return space.project(cells), space

    def _store_scaled_expression(self, coords: np.ndarray, space: ScaledSpace) -> None:
        """Keep the reference cells' scaled coordinates and the space with the reference (saved with the model)."""
        self.reference.extra.update({SCALED_EXPRESSION_EXTRA: coords, SCALED_LOADINGS_EXTRA: space.loadings,
                                     SCALED_OFFSET_EXTRA: space.offset, SCALED_CAPS_EXTRA: space.caps})

    def _require_reference(self) -> None:
        if getattr(self, "reference", None) is None:
            raise InputError("The model has no reference to map onto: train it first (`model.train()`), or load a "
                             "model directory saved after training.")

    def _space_embedding(self, space: str) -> np.ndarray:
        if space == RNA_ONLY and RNA_EMBEDDING_EXTRA in self.reference.extra:
            return np.asarray(self.reference.extra[RNA_EMBEDDING_EXTRA], dtype=np.float32)
        return self.reference.embedding

    def _reference_expression(self) -> np.ndarray | None:
        """The reference cells in its expression space (``reference.extra['expression']``, stored at
        training), else projected from the reference AnnData with the stored loadings and stored;
        ``None`` without either (e.g. a backed reference)."""
        from ..data.positives import project_expression

        stored = self.reference.extra.get(EXPRESSION_EXTRA)
        if stored is not None and len(stored) == len(self.reference.embedding):
            return np.asarray(stored, dtype=np.float32)
        loadings = self.reference.extra.get(EXPRESSION_LOADINGS_EXTRA)
        adata = getattr(self, "adata", None)
        if loadings is None or adata is None or adata.n_obs != len(self.reference.embedding):
            return None
        coords = project_expression(self._prepare(adata, what="the reference").cells,
                                    np.asarray(loadings, dtype=np.float32))
        self.reference.extra[EXPRESSION_EXTRA] = coords
        return coords

    def _query_expression(self, cells: Any) -> np.ndarray:
        """The query cells in the reference's expression space (the stored loadings)."""
        from ..data.positives import project_expression

        loadings = self.reference.extra.get(EXPRESSION_LOADINGS_EXTRA)
        if loadings is None:
            raise InputError("The mapping uses the reference's expression space but the model has none stored; "
                             "re-run `model.prepare_mapping(overwrite=True)` with the reference attached.")
        return project_expression(cells, np.asarray(loadings, dtype=np.float32))

    def _query_expression_features(self, query: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
        """The query's expression features for the confidence (:func:`expression_features`)."""
        sample = self.reference.extra.get(EXPRESSION_SAMPLE_EXTRA)
        if sample is None:
            raise InputError("The confidence model uses expression features but the model has no expression space "
                             "stored; re-run `model.prepare_mapping(overwrite=True)` with the reference attached.")
        features = expression_features(query, np.asarray(sample, dtype=np.float32), k=k, seed=seed)
        return centred_on(features, expression_centres(features))  # relative to the query's median, as calibrated

    def _rna_only_reference(self, adata: ad.AnnData | None, batch_size: int, device: str) -> bool:
        """Embed the reference from RNA alone (AdaBN per source) for RNA-only queries; ``False`` if impossible."""
        from ..train import embed_cells

        if RNA_EMBEDDING_EXTRA in self.reference.extra:
            return True
        adata = adata if adata is not None else getattr(self, "adata", None)
        if adata is None:
            return False
        if adata.n_obs != self.reference.embedding.shape[0]:
            raise InputError(f"The reference AnnData has {adata.n_obs} cells but the model's reference has "
                             f"{self.reference.embedding.shape[0]}; pass the AnnData the model was trained on.")
        prepared = self._prepare(adata, what="the reference", use_protein=False)
        prepared, new = _with_new_domains(prepared, len(self.setup.sources), all_new=True)
        emb = embed_cells(self.network, prepared.cells, batch_size=batch_size, device=device, adapt_domains=new)
        self.reference.extra[RNA_EMBEDDING_EXTRA] = emb
        return True

    def _spaces(self) -> list[str]:
        return [FULL, RNA_ONLY] if RNA_EMBEDDING_EXTRA in self.reference.extra else [FULL]

    def _confidence_model(self, space: str, key: str, k: int, calibration_cells: int | None = None,
                          seed: int | None = None) -> ConfidenceModel | None:
        """The confidence model of ``(space, key)`` for ``k`` neighbours: stored, else calibrated now and stored.

        Stored in ``extra_config['mapping']['confidence'][space][key][str(k)]``;
        ``None`` when the key cannot be calibrated (e.g. a single labeled type).
        """
        cfg = self._mapping_config()
        per_k = cfg["confidence"].setdefault(space, {}).setdefault(key, {})
        entry = per_k.get(str(k))
        if entry is None:
            n_cells = calibration_cells or int(cfg.get("calibration_cells", 5_000))
            seed = self.seed if seed is None else seed
            expression = self._reference_expression()
            if expression is not None and EXPRESSION_SAMPLE_EXTRA not in self.reference.extra:
                rows = np.random.default_rng(seed).permutation(len(expression))[:EXPRESSION_SAMPLE_CELLS]
                self.reference.extra[EXPRESSION_SAMPLE_EXTRA] = expression[np.sort(rows)]
            scaled = self._scaled_expression()
            try:
                result = calibrate_confidence(self._space_embedding(space), self.reference.labels[key],
                                              len(self.setup.labels[key]), k=k, max_cells=n_cells, seed=seed,
                                              pseudo_query=self.reference.extra.get("calibration_rows"),
                                              expression=expression, expression_vote=self._expression_vote(),
                                              expression_veto=self._expression_veto(),
                                              scaled_expression=None if scaled is None else scaled[0],
                                              rare_label_cells=self._rare_label_cells(scaled))
                entry = result.model.to_dict()
            except InputError as exc:  # e.g. a single labeled type: fall back to the vote share
                log.warning("confidence for %r not calibrated (%s); using the vote share", key, exc)
                entry = {"k": k, "error": str(exc)}
            per_k[str(k)] = entry
        return ConfidenceModel.from_dict(entry) if entry.get("correctness") else None

    @searches_on_its_device
    def prepare_mapping(self, adata: ad.AnnData | None = None, k: int = 5, umap: bool = True,
                        calibration_cells: int = 5_000, umap_neighbors: int = 15, umap_min_dist: float = 0.3,
                        seed: int | None = None, batch_size: int = 1024, device: str = "auto",
                        overwrite: bool = False, expression_vote: float = DEFAULT_EXPRESSION_VOTE) -> dict:
        """Compute and store what query mapping needs of the reference (call once after training).

        * per label key, a confidence model calibrated by leave-one-type-out on the
          reference and its default unknown threshold (``extra_config['mapping']``);
        * the reference UMAP (``reference.extra['umap']``), on which queries are placed;
        * from 100k reference cells, the IVF index's centroids (``reference.extra['ivf_centroids.<space>']``);
        * the weight of the expression space's second opinion (``expression_vote``), with which the
          confidence is calibrated;
        * for RNA + protein models, the RNA-only reference embedding
          (``reference.extra['embedding_rna']``; needs the reference AnnData:
          ``adata`` or the one the model was trained on).

        Parameters
        ----------
        adata
            The reference AnnData, for models loaded from disk: RNA + protein models embed it from
            RNA alone, and models saved before the scaled expression space fit it (with ``overwrite``).
        k
            Neighbours the confidence is calibrated for (mapping with another ``k`` recalibrates).
        umap
            Compute the reference UMAP (minutes for millions of cells).
        calibration_cells
            Reference cells used as pseudo-queries in the calibration.
        umap_neighbors, umap_min_dist
            UMAP settings.
        seed
            Seed (default: the model's).
        batch_size, device
            For embedding the reference from RNA alone.
        overwrite
            Recompute what is already stored.
        expression_vote
            Weight of a second opinion on contested labels: each query cell whose two best labels'
            vote shares differ by less than this weight also gets the vote of its ``k`` nearest
            reference cells in the reference's expression space (a truncated SVD of its normalized
            expression, not shaped by the labels), added to its vote shares at this weight
            (:func:`~scconcerto.tools.label_transfer.blend_votes`). Where all ``k`` of a cell's
            expression-space neighbours name one label other than its winner, that vote overrules
            the embedding's (:func:`~scconcerto.tools.label_transfer.veto_rows`; never against a label
            with fewer than ``k`` reference cells). With the reference's scaled expression space
            (PCA of z-scored genes, :mod:`scconcerto.data.scaled_space`; fitted here from the
            reference AnnData unless stored), the vote blended in is that space's, and a label with
            2 to fewer than :data:`RARE_LABEL_CELLS` reference cells holding at least half of it claims
            the cell (:func:`~scconcerto.tools.label_transfer.rare_label_rows`). ``0`` turns all of
            them off; models without an expression space (read from disk) have none. Changing it
            needs ``overwrite`` (the confidence is calibrated with it).

        Returns
        -------
        dict
            The mapping settings stored in ``extra_config['mapping']``.
        """
        self._require_reference()
        seed = self.seed if seed is None else seed
        if not 0.0 <= expression_vote <= 10.0:
            raise InputError(f"expression_vote must lie in [0, 10] (a weight on vote shares), got {expression_vote}.")
        cfg = self._mapping_config()
        if overwrite or not cfg["confidence"]:  # calibrated now: with the current rules
            cfg.update({**CALIBRATION_RULES, "expression_vote": float(expression_vote)})
            cfg.pop("scaled_expression", None)  # decided again (:meth:`_scaled_expression`)
        elif self._expression_vote() != expression_vote:
            log.warning("Kept expression_vote=%s: the stored confidence was calibrated with it. Pass "
                        "overwrite=True to calibrate again with %s.", self._expression_vote(), expression_vote)
        if overwrite:
            cfg["confidence"] = {}
            self.reference.extra.pop(UMAP_EXTRA, None)
            for name in [n for n in self.reference.extra if n.startswith(IVF_CENTROIDS_EXTRA)]:
                del self.reference.extra[name]
            _INDEX_CACHE.pop(self, None)
            if adata is not None or getattr(self, "adata", None) is not None:  # recomputed from it
                for name in (RNA_EMBEDDING_EXTRA, *SCALED_EXTRAS):
                    self.reference.extra.pop(name, None)
        cfg.update({"k": k, "calibration_cells": calibration_cells, "seed": seed})
        if self._scaled_expression(adata) is None:  # decided (and fitted) before the calibration uses it
            for name in SCALED_EXTRAS:  # e.g. fitted in training for the positives: kept only if mapping uses it
                self.reference.extra.pop(name, None)
        if self.setup.proteins and self.reference.protein is not None:
            if not self._rna_only_reference(adata, batch_size, device):
                log.warning("The reference was not embedded from RNA alone (no reference AnnData): RNA-only queries "
                            "cannot be mapped. Pass the reference AnnData to `prepare_mapping`.")
        for space in self._spaces():
            for key in self.setup.labels:
                self._confidence_model(space, key, k, calibration_cells, seed)
            # large queries search an IVF index on CPUs (on a GPU the search is exact: its centroids are
            # computed on the first CPU mapping instead)
            if len(self.reference.embedding) >= APPROXIMATE_MIN_REFERENCE and not gpu_search_active():
                self._reference_index(space, self._space_embedding(space), "ivf", seed)
        expression = self._reference_expression() if self._expression_vote() > 0 else None
        if expression is not None and len(expression) >= APPROXIMATE_MIN_REFERENCE and not gpu_search_active():
            self._reference_index(EXPRESSION_EXTRA, expression, "ivf", seed)
            scaled = self._scaled_expression()
            if scaled is not None:
                self._reference_index(SCALED_EXPRESSION_EXTRA, scaled[0], "ivf", seed)
        if umap:
            self.reference_umap(umap_neighbors, umap_min_dist, seed)
        return cfg

    def reference_umap(self, n_neighbors: int | None = None, min_dist: float | None = None,
                       seed: int | None = None) -> np.ndarray:
        """The reference UMAP coordinates ``(n_ref, 2)``: the stored ones, else computed (seeded) and stored.

        Queries are placed on it by :meth:`map_query` (``obsm['X_umap_ref']``).
        The same model and settings always give the same coordinates, so a
        model saved without them still draws consistent figures.
        """
        self._require_reference()
        if UMAP_EXTRA not in self.reference.extra:
            cfg = self._mapping_config()
            stored = cfg.get("umap", {})
            settings = {"n_neighbors": int(n_neighbors or stored.get("n_neighbors", 15)),
                        "min_dist": float(min_dist if min_dist is not None else stored.get("min_dist", 0.3)),
                        "seed": int(seed if seed is not None else stored.get("seed", self.seed))}
            self.reference.extra[UMAP_EXTRA] = umap_of_embedding(self.reference.embedding, **settings)
            cfg["umap"] = {**settings, "placement": "similarity-weighted mean of the k nearest reference cells"}
        return np.asarray(self.reference.extra[UMAP_EXTRA], dtype=np.float32)

    def unknown_thresholds(self, k: int | None = None, space: str = FULL) -> dict[str, float]:
        """The default unknown threshold of each label key (queries of at least 30 cells), calibrated if needed.

        Parameters
        ----------
        k
            Neighbours (default: the ``k`` :meth:`prepare_mapping` was run with, else 5).
        space
            ``"full"`` (the model's modalities) or ``"rna_only"`` (RNA-only queries of an RNA + protein model).
        """
        self._require_reference()
        k = int(k or self._mapping_config().get("k", 5))
        out = {}
        for key in self.setup.labels:
            model = self._confidence_model(space, key, k)
            if model is not None:
                out[key] = model.threshold
        return out

    # ------------------------------------------------------------------ fine-tuning
    def _finetuned_network(self, prepared: "PreparedCells", new_domains: list[int], epochs: int, seed: int,
                           device: str, options: dict) -> "ConcertoNetwork":
        """A copy of the network whose new sources' DSBN affine (adapters) is trained on the query.

        Unsupervised contrastive training as in pre-training, starting from the
        reference weights; every other parameter is frozen, so the reference
        sources' embedding (and the stored reference embedding) is unchanged.
        """
        from ..train import TrainConfig, fit

        net = copy.deepcopy(self.network).cpu()
        n_known = net.teacher_tail.norm.n_domains
        needed = max(new_domains) + 1 - n_known
        for p in net.parameters():
            p.requires_grad_(False)
        hooks = []
        for norm in net.domain_norms():
            norm.add_domains(needed)
            keep = torch.zeros(norm.n_domains, 1)
            keep[n_known:] = 1.0
            for p in (norm.weight, norm.bias):  # only the rows of the query's sources learn
                p.requires_grad_(True)
                hooks.append(p.register_hook(lambda g, keep=keep: g * keep.to(g.device, g.dtype)))
        base = self.train_config.to_dict() if getattr(self, "train_config", None) else {}
        settings = {"batch_size": base.get("batch_size", 256), "lr": base.get("lr", 1e-3),
                    "max_genes": base.get("max_genes", 512), "gene_dropout": base.get("gene_dropout", 0.0),
                    "temperature": base.get("temperature", 0.1)}
        settings.update(options)
        config = TrainConfig(epochs=epochs, seed=seed, device=device, progress=False, **settings)
        net.train()  # Lightning keeps the modules' mode: dropout (the views) and batch statistics need training mode
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fit(net, prepared.cells, config)
        for hook in hooks:
            hook.remove()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def _reference_index(self, space: str, ref_emb: np.ndarray, kind: str, seed: int) -> Any:
        """The faiss index over the reference cells in ``space`` (an embedding, or the expression space),
        built once and kept in memory for the next maps.

        An IVF index's k-means centroids are kept in ``reference.extra['ivf_centroids.<space>']`` (saved
        with the model), so another process rebuilds it by assigning the cells to them: on a 1M-cell
        reference the first mapping in a process took 99.7 s with the k-means (speed benchmark).
        """
        if gpu_search_active():  # exact search of the array on the GPU: no index to build
            return ref_emb
        cache = _INDEX_CACHE.setdefault(self, {})
        cached = cache.get(space)
        if cached is not None and cached[0] == (kind, seed) and cached[1] is ref_emb:
            return cached[2]
        stored = f"{IVF_CENTROIDS_EXTRA}.{space}"
        centroids = self.reference.extra.get(stored) if kind == "ivf" else None
        if centroids is not None and centroids.shape[1] != ref_emb.shape[1]:
            centroids = None
        index = build_index(ref_emb, kind=kind, seed=seed, centroids=centroids)
        if kind == "ivf" and centroids is None:  # saved with the model: later processes skip the k-means
            self.reference.extra[stored] = ivf_centroids(index)
        cache[space] = ((kind, seed), ref_emb, index)
        return index

    def _embed_query(self, adata: ad.AnnData, batch_key: str | None, use_protein: bool | str,
                     finetune_epochs: int, min_overlap: float, batch_size: int, device: str, seed: int,
                     finetune_options: dict | None, timings: dict[str, float], label_shift: bool = False,
                     k: int = 5, index: str = "auto", info: dict | None = None) -> tuple[np.ndarray, "PreparedCells", str]:
        """The query embedding in the reference space, its prepared cells, and the space (full / RNA-only)."""
        from ..train import embed_cells

        has_panel = bool(self.setup.proteins) and self.setup.protein_key in adata.obsm
        with_protein = has_panel if use_protein == "auto" else bool(use_protein) and has_panel
        if use_protein is True and not has_panel and self.setup.proteins:
            raise InputError(f"use_protein=True but the query has no `obsm[{self.setup.protein_key!r}]`.")
        space = FULL
        if self.setup.proteins and not with_protein:
            if not self._rna_only_reference(None, batch_size, device):
                raise InputError(
                    f"The query has no proteins (`obsm[{self.setup.protein_key!r}]`) but the model was trained on "
                    "RNA + protein, and its RNA-only reference embedding was not prepared, so the query cannot be "
                    "compared with the reference. Call `model.prepare_mapping(reference_adata)` with the AnnData "
                    "the model was trained on (then save the model; `scconcerto map --reference`), or give the "
                    "query its proteins.")
            space = RNA_ONLY
        prepared = self._prepare(adata, batch_key, min_overlap, what="the query", use_protein=with_protein)
        # RNA-only cells and fine-tuned sources never use a reference source's statistics
        prepared, new_domains = _with_new_domains(prepared, len(self.setup.sources),
                                                  all_new=space == RNA_ONLY or finetune_epochs > 0)
        self.last_alignment = prepared.alignment
        network = self.network
        if finetune_epochs > 0:
            t0 = time.perf_counter()
            network = self._finetuned_network(prepared, new_domains, finetune_epochs, seed, device,
                                              dict(finetune_options or {}))
            timings["finetune"] = time.perf_counter() - t0
        adapt = new_domains or None
        if label_shift and new_domains and finetune_epochs == 0:
            t0 = time.perf_counter()
            balanced = self._balanced_adabn(network, prepared.cells, new_domains, space, k, index, batch_size, device,
                                            seed)
            if balanced is not None:
                network, adapt = balanced[0], None
                if info is not None:
                    info["label_shift"] = balanced[1]
                timings["label_shift"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        embedding = embed_cells(network, prepared.cells, batch_size=batch_size, device=device, adapt_domains=adapt)
        timings["embed"] = time.perf_counter() - t0
        return embedding, prepared, space

    def _balanced_adabn(self, network: "ConcertoNetwork", cells: Any, new_domains: list[int], space: str, k: int,
                        index: str, batch_size: int, device: str, seed: int) -> tuple["ConcertoNetwork", dict] | None:
        """A copy of ``network`` whose BN statistics of the unseen sources ``new_domains`` are AdaBN moments
        reweighted to the reference's cell-type composition (:mod:`scconcerto.tools.label_shift`).

        The types are those predicted for (a sample of at most ``LABEL_SHIFT_CELLS`` cells of) each
        source by the vote of the first label key among (at most ``LABEL_SHIFT_REFERENCE_CELLS`` of) the
        reference cells, with plain AdaBN statistics at first and the
        reweighted ones after each of ``LABEL_SHIFT_ROUNDS`` rounds. ``None`` without a label key of
        at least two types.
        """
        from ..train import embed_hidden, teacher_hidden_states, with_new_domains

        key = next((key for key, names in self.setup.labels.items() if len(names) > 1), None)
        if key is None:
            return None
        ref_codes = self.reference.labels[key]
        n_types = len(self.setup.labels[key])
        counts = label_counts(ref_codes, n_types)
        composition = counts / max(int(counts.sum()), 1)
        rows = np.flatnonzero(np.isin(cells.domains, new_domains))
        rows = rows[subsample_per_group(cells.domains[rows], LABEL_SHIFT_CELLS, seed)]
        net = with_new_domains(network, new_domains).eval()
        hidden = teacher_hidden_states(net, cells, rows, batch_size, device)
        domains = cells.domains[rows]
        ref_emb = self._space_embedding(space)
        if len(ref_emb) > LABEL_SHIFT_REFERENCE_CELLS:
            sample = np.sort(np.random.default_rng(seed).choice(len(ref_emb), LABEL_SHIFT_REFERENCE_CELLS,
                                                                replace=False))
            ref_emb, ref_codes = ref_emb[sample], ref_codes[sample]
            search_in = ref_emb  # knn searches the sample exactly (faiss flat, or the GPU)
        else:
            search_in = self._reference_index(space, ref_emb, index_kind(len(ref_emb), cells.n_cells, index), seed)
        norm = net.teacher_tail.norm
        known = list(range(len(self.setup.sources)))
        weights = None
        for round_ in range(LABEL_SHIFT_ROUNDS + 1):
            for d in new_domains:
                mine = domains == d
                if mine.sum() < MIN_ADAPT_CELLS:  # no statistics of its own: the known sources' mean, as AdaBN
                    norm.use_mean_statistics(d, known)
                    continue
                mean, var = weighted_moments(hidden[mine], None if weights is None else weights[mine])
                norm.set_statistics(d, torch.from_numpy(mean), torch.from_numpy(var))
            if round_ == LABEL_SHIFT_ROUNDS:
                break
            pred = vote(knn(embed_hidden(net, hidden, domains), search_in, k=min(k, len(ref_emb))), ref_codes,
                        n_types).codes
            weights = np.ones(len(rows))
            for d in new_domains:
                mine = domains == d
                weights[mine] = balancing_weights(pred[mine], composition)
        info = {"label_key": key, "rounds": LABEL_SHIFT_ROUNDS, "cells": int(len(rows)),
                "max_weight": round(float(weights.max()), 3) if weights is not None and len(weights) else None}
        return net, info

    # ------------------------------------------------------------------ mapping
    @searches_on_its_device
    def map_query(self, adata: ad.AnnData, k: int = 5, batch_key: str | None = "__setup__",
                  finetune_epochs: int = 0, levels: str | list[str] | None = None,
                  unknown_threshold: float | dict[str, float] | None = None, reject: bool = False,
                  index: str = "auto", use_protein: bool | str = "auto", impute: bool = True,
                  impute_k: int = DEFAULT_IMPUTE_K, place: bool = True,
                  min_overlap: float = DEFAULT_MIN_OVERLAP, batch_size: int = 1024, device: str = "auto",
                  seed: int | None = None, finetune_options: dict | None = None,
                  label_shift: bool = True, adjust_proportions: bool = False) -> MappingResult:
        """Map query cells onto the reference and annotate ``adata`` in place.

        Writes ``obsm['X_concerto']`` (query embedding in the reference space);
        for each reference label key ``L``: ``obs['L_pred']``,
        ``obs['L_confidence']`` (0-1) and ``obs['L_unknown']`` (confidence below
        the threshold); with proteins in the reference, ``obsm['protein_imputed']``
        (mean normalized protein of the k nearest reference cells; names in
        ``uns['protein_imputed_names']``); ``obsm['X_umap_ref']`` (the query
        placed on the reference UMAP); and ``uns['scconcerto_mapping']`` (gene
        overlap, k, thresholds, timings).

        Parameters
        ----------
        adata
            Query cells: raw counts or log-normalized values; genes by name
            (missing ones are absent, extra ones ignored).
        k
            Neighbours per query cell (similarity-weighted vote).
        batch_key
            ``obs`` column of the query's sources (default: the model's batch key
            if the query has it); each source unseen by the model gets its own
            AdaBN statistics. ``None``: the query is one source.
        finetune_epochs
            Epochs of unsupervised contrastive fine-tuning of the query sources'
            adapters (their DSBN scale and shift) from the reference weights; the
            reference embedding is unchanged. ``0``: AdaBN only.
        levels
            Label keys from coarse to fine (``["major", "minor"]`` or
            ``"major,minor"``) for hierarchical mapping: each level after the first
            is searched among the reference cells of the predicted parent label.
            Other label keys are mapped against the whole reference.
        unknown_threshold
            Confidence below which a cell is unknown (a number, or one per label
            key); default: the threshold calibrated on the reference.
        reject
            Write ``"unknown"`` into ``L_pred`` for unknown cells (otherwise the
            best label is kept and only ``L_unknown`` flags them).
        index
            ``"auto"`` (exact ``"flat"``, except ``"ivf"`` from a million reference
            cells, or from 100k when query x reference cells exceed 2e9: see
            :func:`index_kind`), ``"flat"``, ``"ivf"`` or ``"hnsw"``. With a GPU ``device``
            every search is exact, on the GPU (:func:`~scconcerto.tools.neighbors.search_device`).
        use_protein
            ``"auto"``: use the query's proteins when it has the model's panel.
            Without them the query is searched against the RNA-only reference embedding.
        impute
            Impute the reference's proteins.
        impute_k
            Neighbours averaged for imputation (cbmc CITE-seq, median Pearson r over 13
            antibodies: 0.861 with 5, 0.870 with 20).
        place
            Place the query on the reference UMAP (computed and stored on first use).
        min_overlap
            Minimum fraction of the model's genes the query must have.
        batch_size, device
            Inference settings.
        seed
            Seed of fine-tuning and of the confidence's subsamples (default: the model's).
        finetune_options
            Other :class:`~scconcerto.train.TrainConfig` fields for fine-tuning (``lr``, ``batch_size``...).
        label_shift
            Balance the AdaBN statistics of unseen query sources for their predicted cell-type
            composition (:mod:`scconcerto.tools.label_shift`), so that a query richer or poorer in
            some types than the reference keeps that biology. Needs a reference label key; not used
            with fine-tuning. Benchmark label-transfer splits: pancreas Xin query 0.948 -> 0.972 ACC,
            pbmcsca CEL-Seq2 0.957 -> 0.993. ``False``: plain AdaBN.
        adjust_proportions
            Adjust the flat label keys' votes (and the first level's) to the query's own label
            proportions, estimated by EM
            (:func:`~scconcerto.tools.label_transfer.adjust_to_proportions`; queries of at least
            ``MIN_QUERY_CELLS`` cells), for a query whose cell-type mix differs strongly from the
            reference's (sorted cells, a depleted type). Off by default: on the benchmark's
            label-transfer splits it moved mean ACC / macro-F1 over 3 seeds by +0.002 / +0.003 only,
            trading symphony 3pv1 accuracy for Kang's. Cells set by the expression veto or a rare
            label's claim keep their labels.

        Returns
        -------
        MappingResult
        """
        self._require_reference()
        if not isinstance(adata, ad.AnnData):
            raise InputError(f"map_query needs an AnnData, got {type(adata).__name__}.")
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}.")
        if finetune_epochs < 0:
            raise InputError(f"finetune_epochs must be 0 or more, got {finetune_epochs}.")
        seed = self.seed if seed is None else seed
        level_keys = _levels_list(levels)
        unknown_keys = [key for key in level_keys if key not in self.setup.labels]
        if unknown_keys:
            raise InputError(f"levels {unknown_keys} are not label keys of the reference (it has "
                             f"{list(self.setup.labels)}). Train the reference with these label keys.")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        shift_info: dict[str, Any] = {}
        embedding, prepared, space = self._embed_query(adata, batch_key, use_protein, finetune_epochs, min_overlap,
                                                       batch_size, device, seed, finetune_options, timings,
                                                       label_shift=label_shift, k=k, index=index, info=shift_info)

        # -- neighbours in the reference
        t0 = time.perf_counter()
        ref_emb = self._space_embedding(space)
        kind = "flat" if gpu_search_active() else index_kind(len(ref_emb), len(embedding), index)
        faiss_index = self._reference_index(space, ref_emb, kind, seed)
        k_eff = int(min(k, len(ref_emb)))
        imputing = impute and self.reference.protein is not None
        if imputing and impute_k < 1:
            raise InputError(f"impute_k must be at least 1, got {impute_k}.")
        k_imp = int(min(impute_k, len(ref_emb))) if imputing else k_eff
        # one search serves the vote (the k nearest) and the imputation (the impute_k nearest)
        searched = knn(embedding, faiss_index, k=max(k_eff, k_imp))
        neighbors = _nearest(searched, k_eff)
        timings["knn"] = time.perf_counter() - t0

        # -- labels, confidence, unknowns
        t0 = time.perf_counter()
        predictions, thresholds, calib, second, proportions = self._transfer_labels(
            adata, embedding, ref_emb, neighbors, level_keys, space, k_eff, unknown_threshold, reject, seed,
            prepared.cells, index, adjust_proportions)
        timings["labels"] = time.perf_counter() - t0
        adata.obsm["X_concerto"] = embedding

        # -- proteins, placement
        imputed = None
        info: dict[str, Any] = {}
        if imputing:
            t0 = time.perf_counter()
            imputed = impute_from_neighbors(_nearest(searched, k_imp), self.reference.protein)
            adata.obsm[IMPUTED_PROTEIN_KEY] = imputed
            adata.uns[f"{IMPUTED_PROTEIN_KEY}_names"] = list(self.setup.proteins)
            info["protein_names"] = list(self.setup.proteins)
            info["impute_k"] = k_imp
            timings["impute"] = time.perf_counter() - t0
        coords = None
        if place:
            t0 = time.perf_counter()
            coords = place_on_reference(neighbors, self.reference_umap())
            adata.obsm[UMAP_KEY] = coords
            timings["place"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start

        info.update({"gene_overlap": prepared.alignment.summary(), "k": k_eff, "index": kind,
                     "search_on": "gpu" if gpu_search_active() else "cpu", "space": space,
                     "with_protein": prepared.cells.protein is not None, "n_reference": int(len(ref_emb)),
                     "thresholds": thresholds, "reject": bool(reject), "finetune_epochs": int(finetune_epochs),
                     "timings": {name: round(v, 4) for name, v in timings.items()}})
        if level_keys:
            info["levels"] = level_keys
        adapted = prepared.source_names if space == RNA_ONLY or finetune_epochs > 0 else prepared.unseen_sources
        if adapted:
            info["adabn_sources"] = [str(s) for s in adapted]
            info["adabn"] = {"balanced": True, **shift_info["label_shift"]} if shift_info else {"balanced": False}
        if calib:
            info["calibration"] = calib
        if second:
            info["expression_vote"] = second
        if proportions:
            info["label_proportions"] = proportions
        adata.uns[MAPPING_UNS] = info
        return MappingResult(embedding=embedding, predictions=predictions, protein_imputed=imputed, umap=coords,
                             neighbors=neighbors, info=info)

    def _second_opinion(self, transfers: dict[str, LabelTransfer], query_expression: Any, query_scaled: Any, k: int,
                        seed: int, index: str
                        ) -> tuple[dict[str, LabelTransfer], dict[str, Any], dict[str, np.ndarray]]:
        """The expression spaces' votes: blended into the contested votes of ``transfers``, a veto where
        unanimous, a rare label's claim where it holds a majority.

        The query cells are searched once among the reference cells in each expression space (only
        the contested ones when the model has no veto, e.g. calibrated before it). Per label key, the
        scaled space's vote (the plain space's for models without it, calibrated before version 4) is
        blended into the contested cells (:func:`~scconcerto.tools.label_transfer.blend_votes`); the
        plain space's vote then overrules the winner of each cell whose ``k`` neighbours there all name
        another label (:func:`~scconcerto.tools.label_transfer.veto_rows`), and a label with 2 to fewer than
        :data:`RARE_LABEL_CELLS` reference cells holding at least half of the scaled space's vote wins
        (:func:`~scconcerto.tools.label_transfer.rare_label_rows`). ``query_expression()`` and
        ``query_scaled()`` give the query cells in those spaces (projected once per mapping). Returns the
        votes, the report for ``uns`` and the overruled rows (vetoed or claimed) per key.
        """
        weight = self._expression_vote()
        coords = self._reference_expression() if weight > 0 and transfers else None
        if coords is None:
            return transfers, {}, {}
        veto = self._expression_veto()
        scaled = self._scaled_expression()
        rare_cells = self._rare_label_cells(scaled)
        contested = {key: contested_rows(tr, weight) for key, tr in transfers.items()}
        union = np.unique(np.concatenate(list(contested.values())))
        rows = np.arange(len(next(iter(transfers.values())).codes)) if veto else union
        info: dict[str, Any] = {"weight": weight, "veto": veto, "scaled_space": scaled is not None,
                                "rare_label_cells": rare_cells, "contested_cells": int(len(union)), "changed": {},
                                "vetoed": {}, "rare_claimed": {}}
        if not len(rows):
            return transfers, info, {}
        kind = "flat" if gpu_search_active() else index_kind(len(coords), len(rows), index)
        k_expr = int(min(k, len(coords)))
        found = knn(query_expression()[rows], self._reference_index(EXPRESSION_EXTRA, coords, kind, seed), k=k_expr)
        found_scaled = found if scaled is None else knn(
            query_scaled()[rows], self._reference_index(SCALED_EXPRESSION_EXTRA, scaled[0], kind, seed),
            k=k_expr)
        out, overruled = {}, {}
        for key, tr in transfers.items():
            codes, n_labels = self.reference.labels[key], len(self.setup.labels[key])
            second = vote(found_scaled, codes, n_labels)
            veto_vote = None if scaled is None else vote(found, codes, n_labels)
            counts = label_counts(codes, tr.votes.shape[1]) if veto else None  # veto: rows are all query cells
            rare = rare_labels(counts, rare_cells) if rare_cells and counts is not None else None
            out[key], vetoed, claimed = second_opinion(tr, contested[key], rows, second, weight, counts, k_expr,
                                                       veto_vote=veto_vote, rare_labels=rare)
            overruled[key] = np.union1d(vetoed, claimed)
            if veto:
                info["vetoed"][key] = int(len(vetoed))
            if rare_cells:
                info["rare_claimed"][key] = int(len(claimed))
            info["changed"][key] = int((out[key].codes != tr.codes).sum())
        return out, info, overruled

    def _to_query_proportions(self, transfers: dict[str, LabelTransfer], kept: dict[str, np.ndarray]
                              ) -> tuple[dict[str, LabelTransfer], dict[str, Any]]:
        """Each key's votes adjusted to the query's label proportions (EM), and a report per key.

        The rows ``kept[key]`` keep their votes: a label set by a veto or a rare label's claim is not
        the embedding's vote to reweigh (left to the EM, a claim was undone on the symphony 5p split,
        macro-F1 0.871 -> 0.834). The report lists the labels above 0.1 % in the query or the
        reference, their estimated and reference proportions, and how many cells changed label.
        """
        out, info = {}, {}
        for key, tr in transfers.items():
            counts = label_counts(self.reference.labels[key], tr.votes.shape[1])
            adjusted, estimated = adjust_to_proportions(tr, counts)
            out[key] = overrule(adjusted, kept.get(key, np.zeros(0, dtype=np.int64)), tr)
            names = list(self.setup.labels[key])
            reference = counts / counts.sum()
            shown = np.flatnonzero((estimated > 1e-3) | (reference > 1e-3))
            # lists, not dicts keyed by label: label names may hold "/", which h5ad reads as a path
            info[key] = {"labels": [str(names[c]) for c in shown],
                         "estimated": np.round(estimated[shown], 4).tolist(),
                         "reference": np.round(reference[shown], 4).tolist(),
                         "changed": int((out[key].codes != tr.codes).sum())}
        return out, info

    def _transfer_labels(self, adata: ad.AnnData, embedding: np.ndarray, ref_emb: np.ndarray,
                         neighbors: NeighborsResults, level_keys: list[str], space: str, k: int,
                         unknown_threshold: float | dict[str, float] | None, reject: bool, seed: int,
                         cells: Any, index: str = "auto", adjust_proportions: bool = False
                         ) -> tuple[dict[str, pd.DataFrame], dict[str, float], dict[str, dict], dict[str, Any],
                                    dict[str, Any]]:
        keys = list(self.setup.labels)
        # the query in the expression space: projected once, if the second opinion or the confidence asks
        query_expression = functools.cache(lambda: self._query_expression(cells))
        query_scaled = functools.cache(lambda: self._scaled_expression()[1].project(cells))

        # flat votes (and the first level of a hierarchy), with the expression space's second opinion
        flat = [key for key in keys if key not in level_keys[1:]]
        transfers = {key: vote(neighbors, self.reference.labels[key], len(self.setup.labels[key])) for key in flat}
        transfers, second, overruled = self._second_opinion(transfers, query_expression, query_scaled, k, seed,
                                                          index)
        proportions: dict[str, Any] = {}
        if adjust_proportions and len(embedding) >= MIN_QUERY_CELLS:
            transfers, proportions = self._to_query_proportions(transfers, overruled)
        # an overruled cell's neighbourhood features are taken among the reference cells of its new label
        results: dict[str, tuple[NeighborsResults, LabelTransfer]] = {}
        for key in flat:
            moved = overruled.get(key, np.zeros(0, dtype=np.int64))
            results[key] = (with_neighbors_of_labels(neighbors, moved, embedding[moved], ref_emb,
                                                     self.reference.labels[key], transfers[key].codes[moved]),
                            transfers[key])
        if level_keys:
            levels = hierarchical_transfer(embedding, ref_emb, [self.reference.labels[key] for key in level_keys],
                                           [len(self.setup.labels[key]) for key in level_keys], k=k,
                                           first_neighbors=results[level_keys[0]][0],
                                           first_transfer=transfers[level_keys[0]])
            results.update(dict(zip(level_keys, levels)))
        ratio = density_ratio(embedding, ref_emb, k=k, seed=seed) if len(embedding) >= MIN_QUERY_CELLS else None

        predictions, thresholds, calib = {}, {}, {}
        expression: dict[str, np.ndarray] | None = None
        for key in keys:
            nb, transfer = results[key]
            features = neighborhood_features(nb, transfer, self.reference.labels[key])
            if ratio is not None:
                features["log_density_ratio"] = ratio
            model = self._confidence_model(space, key, k)
            if model is not None and model.uses_expression and ratio is not None:
                if expression is None:  # once for all keys (small queries use the model without them)
                    expression = self._query_expression_features(query_expression(), k, seed)
                features.update(expression)
            if model is not None:
                confidence = model.confidence(features)
                default = model.threshold_for(features)
                calib[key] = {name: round(float(v), 4) for name, v in model.report.items() if v is not None}
            else:
                confidence, default = transfer.confidence.astype(np.float32), 0.0
            if isinstance(unknown_threshold, dict):
                threshold = float(unknown_threshold.get(key, default))
            else:
                threshold = default if unknown_threshold is None else float(unknown_threshold)
            if not 0.0 <= threshold <= 1.0:
                raise InputError(f"The unknown threshold must lie in [0, 1] (confidence scale), got {threshold}.")
            no_vote = transfer.votes.sum(axis=1) <= 0
            unknown = (confidence < threshold) | no_vote
            cats = list(self.setup.labels[key])
            names = np.asarray(cats, dtype=object)[transfer.codes]
            if reject:
                names = np.where(unknown, UNKNOWN_LABEL, names)
                cats = cats + [UNKNOWN_LABEL] if UNKNOWN_LABEL not in cats else cats
            pred = pd.Categorical(names, categories=cats)
            adata.obs[f"{key}_pred"] = pred
            adata.obs[f"{key}_confidence"] = confidence
            adata.obs[f"{key}_unknown"] = unknown
            thresholds[key] = round(threshold, 6)
            predictions[key] = pd.DataFrame({"pred": pred, "confidence": confidence, "unknown": unknown},
                                            index=adata.obs_names.copy())
        return predictions, thresholds, calib, second, proportions


def _nearest(neighbors: NeighborsResults, k: int) -> NeighborsResults:
    """The ``k`` nearest of a search for more (faiss returns them best first)."""
    if neighbors.n_neighbors == k:
        return neighbors
    return NeighborsResults(indices=neighbors.indices[:, :k], similarities=neighbors.similarities[:, :k])
