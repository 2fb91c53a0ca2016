"""The mapping of query cells onto a trained model's reference, as a class of its own.

:class:`ReferenceMapper` reads a :class:`~scconcerto.Concerto` model (its network, gene setup and reference
cells) and holds what mapping fitted on the reference (:class:`~._reference.MappingState`: the calibrated label
decisions, their unknown thresholds, the UMAP settings) and the in-memory search indexes. Its parts are
functions, one file each: preparing the reference and searching it (:mod:`._reference`), embedding a query in
the reference space (:mod:`._query_embedding`), and mapping with its options (:mod:`._mapping`,
:class:`MapOptions`); the algorithm itself lives in :mod:`scconcerto.mapping`, :mod:`scconcerto.search` and
:mod:`scconcerto.tools`. Mapping never changes the model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np

from .._copy import with_copy
from .._errors import InputError
from ..data.vocabulary import DEFAULT_MIN_OVERLAP
from ..mapping.label_model import DEFAULT_K
from ..search.neighbors import search_device, searches_on_its_device
from . import _mapping
from ._mapping import MapOptions, MappingResult
from ._provenance import record_model_id
from ._reference import FULL, MappingState, ReferenceSearch, find_label_model, prepare_reference

if TYPE_CHECKING:
    from ..mapping import LabelModel

__all__ = ["MapOptions", "MappingResult", "MappingState", "ReferenceMapper"]


class ReferenceMapper:
    """Query-to-reference mapping of a trained model: :meth:`map`, :meth:`prepare`, :meth:`known_probability`.

    ``model.mapper`` is the model's own (``model.map_query`` and ``model.prepare_mapping`` call it); its
    :attr:`state` is saved in the model folder (the ``mapping`` entry of ``config.json``).

    Parameters
    ----------
    model
        The :class:`~scconcerto.Concerto` model whose reference queries are mapped onto.
    state
        What :meth:`prepare` fitted (``None``: not prepared yet).
    """

    def __init__(self, model: Any, state: MappingState | None = None):
        self.model = model
        self.state = state
        self._indexes: dict[str, tuple] = {}  # the last search index built for each space (not saved)

    def bound_to(self, model: Any) -> "ReferenceMapper":
        """A mapper of ``model`` sharing this one's state (for a shallow copy of the model)."""
        return ReferenceMapper(model, self.state)

    def __getstate__(self) -> dict:  # copies and pickles leave the search indexes behind
        return {k: v for k, v in self.__dict__.items() if k != "_indexes"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._indexes = {}

    def __repr__(self) -> str:
        prepared = "not prepared" if self.state is None else f"label keys {list(self.model.setup.labels)}"
        return f"ReferenceMapper({prepared})"

    def _search(self) -> ReferenceSearch:
        """The model's reference cells in each searched space, and their in-memory indexes."""
        if self.model.reference is None:
            raise InputError("The model has no reference to map onto: train it first (`model.train()`), or load a "
                             "model directory saved after training.")
        return ReferenceSearch(self.model.reference, self._indexes)

    def _state(self) -> MappingState:
        if self.state is None:
            self.state = MappingState()
        return self.state

    def _options(self, options: MapOptions) -> MapOptions:
        return options if options.seed is not None else replace(options, seed=self.model.seed)

    # ------------------------------------------------------------------ mapping
    @with_copy(after=lambda mapper, adata: record_model_id(mapper.model, adata))
    def map(self, adata: ad.AnnData, options: MapOptions | None = None, **kwargs: Any) -> MappingResult:
        """Map query cells onto the reference and annotate ``adata`` (in place, or a copy with ``copy=True``).

        The model is not changed.

        Writes ``obsm['X_concerto']`` (the query in the reference space); for each reference label key ``L``:
        ``obs['L_pred']`` (the most probable label), ``obs['L_confidence']`` (probability that it is right),
        ``obs['L_known_prob']`` (probability that the cell is of a type the reference has), ``obs['L_unknown']``
        (that probability below the threshold) and ``obsm['L_proba']`` (the posterior; its columns are listed in
        ``uns['scconcerto_mapping']['classes'][L]``); with proteins in the reference, ``obsm['protein_imputed']``;
        ``obsm['X_umap_ref']`` (the query placed on the reference UMAP); and ``uns['scconcerto_mapping']``.

        Parameters
        ----------
        adata
            Query cells: raw counts or log-normalized values; genes by name (missing ones are absent,
            extra ones ignored).
        options
            How to map (:class:`~scconcerto.model.MapOptions`); default: its defaults.
        copy
            Map a copy of ``adata`` and return it, leaving ``adata`` untouched (keyword only).
        **kwargs
            Fields of :class:`~scconcerto.model.MapOptions`, replacing those of ``options``: ``batch_key``,
            ``levels``, ``reject``, ``unknown_threshold``, ``adjust_proportions``, ``use_protein``, ``impute``,
            ``place``, ``finetune_epochs``, ``label_shift``, ``k``, ``impute_k``, ``index``, ``min_overlap``,
            ``batch_size``, ``device``, ``seed``, ``finetune_options``, ``query_species``.

        Returns
        -------
        MappingResult or AnnData
            The result (``adata`` holds it too); with ``copy=True``, the mapped copy. The model's
            fingerprint (:attr:`~scconcerto.Concerto.model_id`) is recorded in
            ``uns['scconcerto_mapping']['model_id']``.

        Examples
        --------
        >>> model.mapper.map(query, levels="major,minor", reject=True)  # doctest: +SKIP
        >>> model.mapper.map(query, MapOptions(finetune_epochs=5), device="cuda")  # doctest: +SKIP
        """
        search = self._search()
        if not isinstance(adata, ad.AnnData):
            raise InputError(f"map_query needs an AnnData, got {type(adata).__name__}.")
        options = self._options(MapOptions.of(options, **kwargs))
        with search_device(options.device):  # exact searches on the device of the mapping
            return _mapping.map_cells(self.model, self._state(), search, adata, options)

    @searches_on_its_device
    def known_probability(self, adata: ad.AnnData, label_key: str, batch_key: str | None = "__setup__",
                          use_protein: bool | str = "auto", batch_size: int = 1024, device: str = "auto",
                          min_overlap: float = DEFAULT_MIN_OVERLAP, seed: int | None = None,
                          query_species: str | None = None, known_share: float | None = None
                          ) -> tuple[np.ndarray, float]:
        """The probability that each cell is of a type the reference has under ``label_key``, and the default
        unknown threshold: the novelty model of mapping, for other predictors (e.g. the classifier).

        The cells are embedded and searched as :meth:`map` does; ``adata`` is not changed. ``known_share``: the
        prior share of cells of known types (as in :meth:`map`; default: even odds).
        """
        search = self._search()
        if label_key not in self.model.setup.labels:
            raise InputError(f"{label_key!r} is not a label key of the reference ({list(self.model.setup.labels)}).")
        options = self._options(MapOptions(batch_key=batch_key, use_protein=use_protein, batch_size=batch_size,
                                           device=device, min_overlap=min_overlap, seed=seed,
                                           query_species=query_species, known_share=known_share))
        return _mapping.known_probability(self.model, self._state(), search, adata, label_key, options)

    # ------------------------------------------------------------------ the reference
    @searches_on_its_device
    def prepare(self, adata: ad.AnnData | None = None, k: int = DEFAULT_K, umap: bool = True,
                umap_neighbors: int = 15, umap_min_dist: float = 0.3, seed: int | None = None,
                batch_size: int = 1024, device: str = "auto", overwrite: bool = False) -> MappingState:
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
        MappingState
            What was fitted (also :attr:`state`, saved with the model).
        """
        search = self._search()
        seed = self.model.seed if seed is None else seed
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive number of neighbours, got {k!r}.")
        reference = self.model.reference
        if overwrite:
            self.state = None
            reference.umap = None
            reference.ann_indexes = {}
            self._indexes.clear()
            if adata is not None or self.model.adata is not None:  # recomputed from it
                reference.embedding_rna = None
                reference.scaled_expression = reference.scaled_space = None
        return prepare_reference(self.model, self._state(), search, adata, k, umap, umap_neighbors, umap_min_dist,
                                 seed, batch_size, device)

    def label_model(self, key: str, space: str = FULL) -> "LabelModel | None":
        """The calibrated label decision of ``key`` (``None`` for a key that could not be calibrated, e.g. a
        single labeled type: its cells get the plain vote)."""
        self._search()  # the model must have a reference
        return find_label_model(self._state(), key, space)

    def reference_umap(self) -> np.ndarray | None:
        """The stored reference UMAP coordinates ``(n_ref, 2)``, or ``None`` when the model was prepared without
        one (``prepare_mapping(umap=True)`` computes it)."""
        found = self._search().reference.umap
        return None if found is None else np.asarray(found, dtype=np.float32)
