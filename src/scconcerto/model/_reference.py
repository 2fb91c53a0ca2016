"""What query mapping needs of the reference, prepared once and saved with the model.

:class:`ReferenceMixin` keeps, in ``extra_config['mapping']``, the confidence
models and unknown thresholds calibrated by leave-one-type-out on the reference
and the second opinion's weight; in ``reference.extra``, the reference UMAP, the
IVF centroids of large references, the RNA-only embedding of RNA + protein
models, and the reference cells in its expression spaces: the plain SVD space
(``expression``, stored at training) and the scaled space (``scaled_expression``,
:mod:`scconcerto.data.scaled_space`). It also holds the in-memory faiss index
of each searched space. :meth:`ReferenceMixin.prepare_mapping` computes all of
it; :meth:`~scconcerto.model.Concerto.map_query` computes what is missing on
first use.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np

from .._errors import InputError
from ..data.scaled_space import ScaledSpace, fit_scaled_space
from ..tools.confidence import ConfidenceModel, calibrate_confidence
from ..tools.label_transfer import label_counts
from ..tools.neighbors import build_index, gpu_search_active, ivf_centroids, searches_on_its_device
from ..tools.placement import reference_umap as umap_of_embedding

if TYPE_CHECKING:
    from ..data.setup import PreparedCells

log = logging.getLogger("scconcerto")

MAPPING_CONFIG = "mapping"
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


class ReferenceMixin:
    """What mapping needs of the reference (confidence, UMAP, expression spaces, indexes).

    Mixed into :class:`~scconcerto.model.Concerto` through :class:`~scconcerto.model._mapping.MappingMixin`.
    """

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
            the cell (:func:`~scconcerto.tools.label_transfer.rare_label_rows`); the confidence also
            reads how much of that vote backs each cell's label
            (:data:`~scconcerto.tools.confidence.AGREEMENT_FEATURE`). ``0`` turns all of them off;
            models without an expression space (read from disk) have none. Changing it needs
            ``overwrite`` (the confidence is calibrated with it).

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

