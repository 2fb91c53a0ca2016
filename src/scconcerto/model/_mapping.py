"""Query-to-reference mapping (label transfer, confidence, imputation, hierarchy).

:meth:`MappingMixin.map_query` embeds a query in the reference space
(:mod:`._query_embedding`: genes aligned by name, AdaBN per unseen query
source, optional fine-tuning of the query sources' adapters), finds each query
cell's k nearest reference cells (faiss), votes their labels (flat or
hierarchical), asks the reference's expression spaces for a second opinion (a
blend into contested votes, a veto where unanimous, a rare label's claim where
it holds a majority), scores each transfer with a confidence calibrated on the
reference, imputes the reference's proteins, and places the query on the
stored reference UMAP.

What mapping needs of the reference (confidence models, unknown thresholds,
the reference UMAP, the expression spaces, the RNA-only embedding of RNA +
protein models) is prepared once by
:meth:`~._reference.ReferenceMixin.prepare_mapping`, or lazily on the first
map, and saved with the model (:mod:`._reference`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._errors import InputError
from .._keys import (IMPUTED_PROTEIN_KEY, IMPUTED_PROTEIN_NAMES_KEY, MAPPING_UNS, REFERENCE_UMAP_KEY, UNKNOWN_LABEL,
                     confidence_key, pred_key, unknown_key)
from ..data.vocabulary import DEFAULT_MIN_OVERLAP
from ..tools.confidence import (AGREEMENT_FEATURE, MIN_QUERY_CELLS, centred_on, density_ratio, expression_centres,
                                expression_features, neighborhood_features)
from ..tools.hierarchy import hierarchical_transfer, with_neighbors_of_labels
from ..tools.imputation import impute_from_neighbors
from ..tools.label_transfer import (LabelTransfer, adjust_to_proportions, contested_rows, label_counts,
                                   overrule, rare_labels, second_opinion, share_of, vote)
from ..tools.neighbors import NeighborsResults, gpu_search_active, knn, searches_on_its_device
from ..tools.placement import place_on_reference
from ._query_embedding import QueryEmbeddingMixin
from ._reference import (EXPRESSION_EXTRA, EXPRESSION_LOADINGS_EXTRA, EXPRESSION_SAMPLE_EXTRA, RNA_ONLY,
                         SCALED_EXPRESSION_EXTRA, ReferenceMixin, index_kind)

DEFAULT_IMPUTE_K = 20


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


class MappingMixin(ReferenceMixin, QueryEmbeddingMixin):
    """Query-to-reference mapping (label transfer, confidence, imputation, hierarchy).

    Mixed into :class:`~scconcerto.model.Concerto`.
    """

    # ------------------------------------------------------------------ mapping
    @searches_on_its_device
    def map_query(self, adata: ad.AnnData, k: int = 5, batch_key: str | None = "__setup__",
                  finetune_epochs: int = 0, levels: str | list[str] | None = None,
                  unknown_threshold: float | dict[str, float] | None = None, reject: bool = False,
                  index: str = "auto", use_protein: bool | str = "auto", impute: bool = True,
                  impute_k: int = DEFAULT_IMPUTE_K, place: bool = True,
                  min_overlap: float = DEFAULT_MIN_OVERLAP, batch_size: int = 1024, device: str = "auto",
                  seed: int | None = None, finetune_options: dict | None = None,
                  label_shift: bool = True, adjust_proportions: bool = False,
                  query_species: str | None = None) -> MappingResult:
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
        query_species
            ``"human"`` or ``"mouse"`` when the query is of another species than the model: genes are
            matched through 1:1 orthologs (:mod:`scconcerto.data.genes`). ``None``: the model's species.
            Either way Ensembl ids, versions and letter case are harmonised, and the genes matched by each
            rule are in ``uns['scconcerto_mapping']['gene_overlap']``.
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
                                                       label_shift=label_shift, k=k, index=index, info=shift_info,
                                                       query_species=query_species)

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
            adata.uns[IMPUTED_PROTEIN_NAMES_KEY] = list(self.setup.proteins)
            info["protein_names"] = list(self.setup.proteins)
            info["impute_k"] = k_imp
            timings["impute"] = time.perf_counter() - t0
        coords = None
        if place:
            t0 = time.perf_counter()
            coords = place_on_reference(neighbors, self.reference_umap())
            adata.obsm[REFERENCE_UMAP_KEY] = coords
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
                        ) -> tuple[dict[str, LabelTransfer], dict[str, Any], dict[str, np.ndarray],
                                   NeighborsResults | None]:
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
        votes, the report for ``uns``, the overruled rows (vetoed or claimed) per key and, with the veto,
        every query cell's neighbours in the space whose vote is blended in (for the confidence's
        :data:`~scconcerto.tools.confidence.AGREEMENT_FEATURE`).
        """
        weight = self._expression_vote()
        coords = self._reference_expression() if weight > 0 and transfers else None
        if coords is None:
            return transfers, {}, {}, None
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
            return transfers, info, {}, None
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
        return out, info, overruled, found_scaled if veto else None

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
        transfers, second, overruled, expression_neighbors = self._second_opinion(
            transfers, query_expression, query_scaled, k, seed, index)
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
            if model is not None and model.uses_agreement:
                if expression_neighbors is None:
                    raise InputError("The confidence model reads the expression space's vote, which this mapping "
                                     "did not search (the model lacks its expression space); re-run "
                                     "`model.prepare_mapping(overwrite=True)` with the reference attached.")
                codes = self.reference.labels[key]
                features[AGREEMENT_FEATURE] = share_of(vote(expression_neighbors, codes, len(self.setup.labels[key])),
                                                       transfer.codes)
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
            adata.obs[pred_key(key)] = pred
            adata.obs[confidence_key(key)] = confidence
            adata.obs[unknown_key(key)] = unknown
            thresholds[key] = round(threshold, 6)
            predictions[key] = pd.DataFrame({"pred": pred, "confidence": confidence, "unknown": unknown},
                                            index=adata.obs_names.copy())
        return predictions, thresholds, calib, second, proportions

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



def _nearest(neighbors: NeighborsResults, k: int) -> NeighborsResults:
    """The ``k`` nearest of a search for more (faiss returns them best first)."""
    if neighbors.n_neighbors == k:
        return neighbors
    return NeighborsResults(indices=neighbors.indices[:, :k], similarities=neighbors.similarities[:, :k])

