"""What query mapping needs of the reference, prepared once when the reference is built and saved with the model.

:class:`ReferenceMixin` keeps, in ``extra_config['mapping']``, one calibrated label decision per label key and
embedding space (:class:`~scconcerto.mapping.LabelModel`: posterior, ``P(right)``, ``P(seen type)``, unknown
threshold); in ``reference.extra``, the reference UMAP, the approximate indexes of large references, the RNA-only
embedding of RNA + protein models, and the reference cells in its scaled expression space
(:mod:`scconcerto.data.scaled_space`) with that space. It also holds the in-memory faiss index of each searched
space. :meth:`ReferenceMixin.prepare_mapping` computes all of it; mapping only reads it.
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
from ..mapping.label_model import DEFAULT_K, LabelModel, fit_label_model
from ..search.ann import STORED_KIND, index_from_array, index_to_array, stored_index
from ..search.neighbors import (build_index, gpu_search_active, index_kind, may_be_approximate,
                                searches_on_its_device)
from ..tools.placement import reference_umap as umap_of_embedding

if TYPE_CHECKING:
    from ..data.setup import PreparedCells

log = logging.getLogger("scconcerto")

MAPPING_CONFIG = "mapping"
#: Version of what ``extra_config['mapping']`` holds; models prepared by an older version must be prepared again.
MAPPING_VERSION = 5
UMAP_EXTRA = "umap"
IVF_CENTROIDS_EXTRA = "ivf_centroids"  # models prepared before 2026-12-06: the IVF index's centroids only
ANN_INDEX_EXTRA = "ann_index"  # + ".<space>": the approximate index of large references (faiss bytes)
RNA_EMBEDDING_EXTRA = "embedding_rna"
CALIBRATION_EXTRA = "calibration_rows"  # labeled rows kept out of label-aware training: they calibrate mapping
SCALED_EXPRESSION_EXTRA = "scaled_expression"  # every reference cell in the scaled expression space (n_ref x c)
SCALED_LOADINGS_EXTRA = "scaled_expression_loadings"  # genes x c (:class:`~scconcerto.data.scaled_space.ScaledSpace`)
SCALED_OFFSET_EXTRA = "scaled_expression_offset"  # c
SCALED_CAPS_EXTRA = "scaled_expression_caps"  # genes: clipping values
SCALED_EXTRAS = (SCALED_EXPRESSION_EXTRA, SCALED_LOADINGS_EXTRA, SCALED_OFFSET_EXTRA, SCALED_CAPS_EXTRA)
FULL, RNA_ONLY = "full", "rna_only"
#: The last faiss index built for each model and space (not saved, not copied with the model).
_INDEX_CACHE: "weakref.WeakKeyDictionary[Any, dict[str, tuple]]" = weakref.WeakKeyDictionary()


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
    """What mapping needs of the reference (label decisions, UMAP, expression space, indexes).

    Mixed into :class:`~scconcerto.model.Concerto` through :class:`~scconcerto.model._mapping.MappingMixin`.
    """

    def _mapping_config(self) -> dict:
        cfg = self.extra_config.get(MAPPING_CONFIG)
        if cfg is not None and int(cfg.get("version", 0)) != MAPPING_VERSION:
            raise InputError("This model's mapping was prepared by an earlier version of scConcerto. Prepare it "
                             "again: `model.prepare_mapping(reference_adata, overwrite=True)` then save the model "
                             "(or train the reference again).")
        return self.extra_config.setdefault(MAPPING_CONFIG, {"version": MAPPING_VERSION, "labels": {}})

    def _require_reference(self) -> None:
        if getattr(self, "reference", None) is None:
            raise InputError("The model has no reference to map onto: train it first (`model.train()`), or load a "
                             "model directory saved after training.")

    def _space_embedding(self, space: str) -> np.ndarray:
        if space == RNA_ONLY and RNA_EMBEDDING_EXTRA in self.reference.extra:
            return np.asarray(self.reference.extra[RNA_EMBEDDING_EXTRA], dtype=np.float32)
        return self.reference.embedding

    # ------------------------------------------------------------------ the expression space
    def _scaled_expression(self) -> tuple[np.ndarray, ScaledSpace] | None:
        """The reference cells in its scaled expression space and that space (stored), else ``None``."""
        extra = self.reference.extra
        if SCALED_EXPRESSION_EXTRA not in extra or len(extra[SCALED_EXPRESSION_EXTRA]) != len(self.reference.embedding):
            return None
        space = ScaledSpace(*(np.asarray(extra[name], dtype=np.float32)
                              for name in (SCALED_LOADINGS_EXTRA, SCALED_OFFSET_EXTRA, SCALED_CAPS_EXTRA)))
        return np.asarray(extra[SCALED_EXPRESSION_EXTRA], dtype=np.float32), space

    def _fit_scaled_expression(self, cells: Any, seed: int) -> tuple[np.ndarray, ScaledSpace] | None:
        """The in-memory reference ``cells`` in a scaled expression space fitted on them, and that space;
        ``None`` when there is nothing to fit (e.g. a single varying gene)."""
        try:
            space = fit_scaled_space(cells, seed=seed)
        except ValueError as exc:
            log.info("No scaled expression space for the reference (%s).", exc)
            return None
        return space.project(cells), space

    def _store_scaled_expression(self, coords: np.ndarray, space: ScaledSpace) -> None:
        """Keep the reference cells' scaled coordinates and the space with the reference (saved with the model)."""
        self.reference.extra.update({SCALED_EXPRESSION_EXTRA: coords, SCALED_LOADINGS_EXTRA: space.loadings,
                                     SCALED_OFFSET_EXTRA: space.offset, SCALED_CAPS_EXTRA: space.caps})

    def _ensure_scaled_expression(self, adata: ad.AnnData | None, seed: int) -> None:
        """Fit and store the scaled expression space from the in-memory reference AnnData when it is missing."""
        if self._scaled_expression() is not None:
            return
        adata = adata if adata is not None else getattr(self, "adata", None)
        if adata is None or adata.n_obs != len(self.reference.embedding):
            return
        cells = self._prepare(adata, what="the reference").cells
        if cells.on_disk:
            return
        fitted = self._fit_scaled_expression(cells, seed)
        if fitted is not None:
            self._store_scaled_expression(*fitted)

    # ------------------------------------------------------------------ RNA-only reference
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

    # ------------------------------------------------------------------ label decisions
    def label_model(self, key: str, space: str = FULL) -> LabelModel | None:
        """The calibrated label decision of ``key`` (``None`` for a key that could not be calibrated, e.g. a
        single labeled type: its cells get the plain vote)."""
        self._require_reference()
        stored = self._mapping_config()["labels"].get(space, {}).get(key)
        if stored is None:
            raise InputError(f"The model's mapping is not prepared for label key {key!r} ({space} space). Call "
                             "`model.prepare_mapping(reference_adata)` and save the model.")
        return None if "error" in stored else LabelModel.from_dict(stored)

    def _fit_label_models(self, space: str, k: int, seed: int) -> None:
        cfg = self._mapping_config()
        scaled = self._scaled_expression()
        per_key = cfg["labels"].setdefault(space, {})
        for key, names in self.setup.labels.items():
            try:
                model = fit_label_model(self._space_embedding(space), self.reference.labels[key], list(names),
                                        self.reference.extra.get(CALIBRATION_EXTRA),
                                        None if scaled is None else scaled[0], k=k, seed=seed)
                per_key[key] = model.to_dict()
            except InputError as exc:
                log.warning("The label decision of %r is not calibrated (%s): its cells get the plain vote.", key, exc)
                per_key[key] = {"error": str(exc)}

    @searches_on_its_device
    def prepare_mapping(self, adata: ad.AnnData | None = None, k: int = DEFAULT_K, umap: bool = True,
                        umap_neighbors: int = 15, umap_min_dist: float = 0.3, seed: int | None = None,
                        batch_size: int = 1024, device: str = "auto", overwrite: bool = False) -> dict:
        """Compute and store what query mapping needs of the reference (runs at the end of training).

        * per label key, the calibrated label decision (:class:`~scconcerto.mapping.LabelModel`), fitted on
          held-out reference cells;
        * the reference cells in their scaled expression space (from the in-memory reference AnnData);
        * for RNA + protein models, the RNA-only reference embedding (needs the reference AnnData);
        * from 100k reference cells, an approximate (IVF) index of each searched space;
        * the reference UMAP, on which queries are placed (``umap``).

        Parameters
        ----------
        adata
            The reference AnnData, for models loaded from disk (RNA + protein models embed it from RNA alone;
            the expression space is fitted on it).
        k
            Candidates of each cell's label vote.
        umap
            Compute the reference UMAP.
        umap_neighbors, umap_min_dist
            UMAP settings.
        seed
            Seed (default: the model's).
        batch_size, device
            For embedding the reference from RNA alone.
        overwrite
            Recompute what is already stored.

        Returns
        -------
        dict
            The mapping settings stored in ``extra_config['mapping']``.
        """
        self._require_reference()
        seed = self.seed if seed is None else seed
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive number of neighbours, got {k!r}.")
        if overwrite:
            self.extra_config.pop(MAPPING_CONFIG, None)
            self.reference.extra.pop(UMAP_EXTRA, None)
            for name in [n for n in self.reference.extra if n.startswith((IVF_CENTROIDS_EXTRA, ANN_INDEX_EXTRA))]:
                del self.reference.extra[name]
            _INDEX_CACHE.pop(self, None)
            if adata is not None or getattr(self, "adata", None) is not None:  # recomputed from it
                for name in (RNA_EMBEDDING_EXTRA, *SCALED_EXTRAS):
                    self.reference.extra.pop(name, None)
        cfg = self._mapping_config()
        if self.setup.proteins and self.reference.protein is not None:
            if not self._rna_only_reference(adata, batch_size, device):
                log.warning("The reference was not embedded from RNA alone (no reference AnnData): RNA-only queries "
                            "cannot be mapped. Pass the reference AnnData to `prepare_mapping`.")
        self._ensure_scaled_expression(adata, seed)
        for space in self._spaces():
            if space not in cfg["labels"]:
                self._fit_label_models(space, k, seed)
            if may_be_approximate(len(self.reference.embedding)) and not gpu_search_active():
                self._reference_index(space, self._space_embedding(space), STORED_KIND, seed, store=True)
        scaled = self._scaled_expression()
        if scaled is not None and may_be_approximate(len(scaled[0])) and not gpu_search_active():
            self._reference_index(SCALED_EXPRESSION_EXTRA, scaled[0], STORED_KIND, seed, store=True)
        cfg.update({"k": int(k), "seed": int(seed)})
        if umap:
            self._compute_reference_umap(umap_neighbors, umap_min_dist, seed)
        return cfg

    # ------------------------------------------------------------------ UMAP and indexes
    def _compute_reference_umap(self, n_neighbors: int, min_dist: float, seed: int) -> None:
        if UMAP_EXTRA in self.reference.extra:
            return
        self.reference.extra[UMAP_EXTRA] = umap_of_embedding(self.reference.embedding, n_neighbors, min_dist, seed)
        self._mapping_config()["umap"] = {"n_neighbors": int(n_neighbors), "min_dist": float(min_dist),
                                          "seed": int(seed),
                                          "placement": "similarity-weighted mean of the nearest reference cells"}

    def reference_umap(self) -> np.ndarray | None:
        """The stored reference UMAP coordinates ``(n_ref, 2)``, or ``None`` when the model was prepared without
        one (``prepare_mapping(umap=True)`` computes it)."""
        self._require_reference()
        found = self.reference.extra.get(UMAP_EXTRA)
        return None if found is None else np.asarray(found, dtype=np.float32)

    def _search_kind(self, space: str, n_base: int, n_query: int, index: str) -> str:
        """The index a search of ``n_query`` rows among the reference cells in ``space`` uses
        (:func:`~scconcerto.search.index_kind`; exact on a GPU; an index stored with the reference counts as built)."""
        if gpu_search_active():
            return "flat"
        return index_kind(n_base, n_query, index, prebuilt=f"{ANN_INDEX_EXTRA}.{space}" in self.reference.extra)

    def _reference_index(self, space: str, ref_emb: np.ndarray, kind: str, seed: int, store: bool = False) -> Any:
        """What the reference cells in ``space`` are searched in: the array itself for exact search, else a faiss
        index, built once and kept in memory for the next maps.

        The approximate index of a large reference is saved with the model (``reference.extra['ann_index.<space>']``,
        faiss's own format, checked when read) when the reference is prepared (``store``), so another process
        reads it instead of building it. (Models prepared before 2026-12-06 kept only the IVF centroids, in
        ``ivf_centroids.<space>``: their index is rebuilt by assigning the cells to them.)
        """
        if gpu_search_active() or kind == "flat":  # exact: chunked matrix products (:func:`~scconcerto.search.knn`)
            return ref_emb
        cache = _INDEX_CACHE.setdefault(self, {})
        cached = cache.get(space)
        if cached is not None and cached[0] == (kind, seed) and cached[1] is ref_emb:
            return cached[2]
        saved = self.reference.extra.get(f"{ANN_INDEX_EXTRA}.{space}") if kind == STORED_KIND else None
        centroids = self.reference.extra.get(f"{IVF_CENTROIDS_EXTRA}.{space}") if kind == "ivf" else None
        if saved is not None:
            index = index_from_array(saved, *ref_emb.shape)
        elif centroids is not None and centroids.ndim == 2 and centroids.shape[1] == ref_emb.shape[1]:
            index = build_index(ref_emb, kind=kind, seed=seed, centroids=centroids)
        else:
            index = stored_index(ref_emb, seed) if kind == STORED_KIND else build_index(ref_emb, kind=kind, seed=seed)
            if store and kind == STORED_KIND:
                self.reference.extra[f"{ANN_INDEX_EXTRA}.{space}"] = index_to_array(index)
        cache[space] = ((kind, seed), ref_emb, index)
        return index
