"""What query mapping needs of the reference, prepared once when the reference is built and saved with the model.

:func:`prepare_reference` keeps, in ``ReferenceMapper.state`` (:class:`MappingState`, the ``mapping`` entry of
``config.json``), one calibrated label decision per label key and embedding space
(:class:`~scconcerto.mapping.LabelModel`: posterior, ``P(right)``, ``P(seen type)``, unknown threshold); in the
typed fields of ``model.reference`` (:class:`~scconcerto.model.storage.ReferenceStore`), the reference UMAP, the
approximate indexes of large references, the RNA-only embedding of RNA + protein models, and the reference cells in
its scaled expression space (:mod:`scconcerto.data.scaled_space`) with that space. :class:`ReferenceSearch` reads
the reference cells of each searched space and keeps their in-memory faiss indexes. Mapping only reads all of it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np

from .._errors import InputError, ModelFileError
from ..data.scaled_space import ScaledSpace, scaled_expression
from ..mapping.label_model import LabelModel, fit_label_model
from ..search.ann import STORED_KIND, index_from_array, index_to_array, stored_index
from ..search.neighbors import build_index, gpu_search_active, index_kind, may_be_approximate
from ..tools.placement import reference_umap as umap_of_embedding
from ._schema import check_dataclass

if TYPE_CHECKING:
    from ..data.setup import PreparedCells
    from .storage import ReferenceStore

log = logging.getLogger("scconcerto")

#: The name of the scaled expression space among the searched spaces (its approximate index).
SCALED_EXPRESSION = "scaled_expression"
FULL, RNA_ONLY = "full", "rna_only"


@dataclass
class UmapSettings:
    """How the reference UMAP was computed, and how queries are placed on it."""

    n_neighbors: int
    min_dist: float
    seed: int
    placement: str = "similarity-weighted mean of the nearest reference cells"


@dataclass
class MappingState:
    """What :meth:`ReferenceMapper.prepare <scconcerto.model.mapper.ReferenceMapper.prepare>` fitted: the ``mapping`` entry of ``config.json``.

    Attributes
    ----------
    label_models
        Per embedding space (``"full"``, ``"rna_only"``) and label key, the calibrated label decision.
    uncalibrated
        Per space, the label keys that could not be calibrated (e.g. a single labeled type) and why: their
        cells get the plain vote.
    k, seed
        Candidates of each cell's label vote, and the seed of the calibration.
    umap
        The reference UMAP's settings, when it was computed.
    """

    label_models: dict[str, dict[str, LabelModel]] = field(default_factory=dict)
    uncalibrated: dict[str, dict[str, str]] = field(default_factory=dict)
    k: int | None = None
    seed: int | None = None
    umap: UmapSettings | None = None

    def to_dict(self) -> dict:
        return {"label_models": {space: {key: m.to_dict() for key, m in models.items()}
                                 for space, models in self.label_models.items()},
                "uncalibrated": {space: dict(keys) for space, keys in self.uncalibrated.items()},
                "k": self.k, "seed": self.seed,
                "umap": None if self.umap is None else dataclasses.asdict(self.umap)}

    @classmethod
    def from_dict(cls, d: Any) -> "MappingState":
        """The state :meth:`to_dict` wrote; :class:`ModelFileError` (or :class:`InputError` for a damaged label
        decision) when it does not fit."""
        check_dataclass(d, cls, "mapping")
        if d["umap"] is not None:
            check_dataclass(d["umap"], UmapSettings, "mapping.umap")
        if set(d["uncalibrated"]) - set(d["label_models"]):
            raise ModelFileError("config.json of the model: mapping.uncalibrated names spaces that mapping.label_models "
                                 "lacks; the file was edited or damaged. Prepare the mapping again: "
                                 "`model.prepare_mapping(reference_adata, overwrite=True)`, then save the model.")
        return cls(label_models={space: {key: LabelModel.from_dict(m) for key, m in models.items()}
                                 for space, models in d["label_models"].items()},
                   uncalibrated={space: dict(keys) for space, keys in d["uncalibrated"].items()},
                   k=d["k"], seed=d["seed"], umap=None if d["umap"] is None else UmapSettings(**d["umap"]))


def new_query_domains(prepared: "PreparedCells", n_known: int, all_new: bool) -> tuple["PreparedCells", list[int]]:
    """Give every query source its own new domain id when ``all_new``; list the ids that need AdaBN."""
    cells = prepared.cells
    if all_new:
        _, codes = np.unique(cells.domains, return_inverse=True)
        cells = replace(cells, domains=(codes + n_known).astype(np.int64))
        prepared = replace(prepared, cells=cells)
    new = sorted(set(np.unique(cells.domains[cells.domains >= n_known]).tolist()))
    return prepared, new


class ReferenceSearch:
    """The reference cells in each searched space (``"full"``, ``"rna_only"``, the scaled expression space) and
    what they are searched in: the array for exact search, else a faiss index kept in ``cache`` for the next maps.

    Parameters
    ----------
    reference
        The model's reference cells.
    cache
        The mapper's in-memory indexes, per space (not saved).
    """

    def __init__(self, reference: "ReferenceStore", cache: dict[str, tuple]):
        self.reference = reference
        self.cache = cache

    def embedding(self, space: str) -> np.ndarray:
        """The reference embedding searched in ``space`` (the RNA-only one when stored, else the full one)."""
        if space == RNA_ONLY and self.reference.embedding_rna is not None:
            return np.asarray(self.reference.embedding_rna, dtype=np.float32)
        return self.reference.embedding

    def spaces(self) -> list[str]:
        """The embedding spaces queries are mapped in."""
        return [FULL, RNA_ONLY] if self.reference.embedding_rna is not None else [FULL]

    def scaled(self) -> tuple[np.ndarray, ScaledSpace] | None:
        """The reference cells in its scaled expression space and that space (stored), else ``None``."""
        ref = self.reference
        if ref.scaled_expression is None or ref.scaled_space is None or len(ref.scaled_expression) != len(ref.embedding):
            return None
        # float32 arrays, every other field (the centring) as stored
        space = replace(ref.scaled_space, **{name: np.asarray(getattr(ref.scaled_space, name), dtype=np.float32)
                                             for name in ("loadings", "offset", "caps")})
        return np.asarray(ref.scaled_expression, dtype=np.float32), space

    def kind(self, space: str, n_base: int, n_query: int, index: str) -> str:
        """The index a search of ``n_query`` rows among the reference cells in ``space`` uses
        (:func:`~scconcerto.search.index_kind`; exact on a GPU; an index stored with the reference counts as built)."""
        if gpu_search_active():
            return "flat"
        return index_kind(n_base, n_query, index, prebuilt=space in self.reference.ann_indexes)

    def index(self, space: str, ref_emb: np.ndarray, kind: str, seed: int, store: bool = False) -> Any:
        """What the reference cells in ``space`` are searched in: the array itself for exact search, else a faiss
        index, built once and kept in memory for the next maps.

        The approximate index of a large reference is saved with the model (``reference.ann_indexes[space]``,
        faiss's own format, checked when read) when the reference is prepared (``store``), so another process
        reads it instead of building it.
        """
        if gpu_search_active() or kind == "flat":  # exact: chunked matrix products (:func:`~scconcerto.search.knn`)
            return ref_emb
        cached = self.cache.get(space)
        if cached is not None and cached[0] == (kind, seed) and cached[1] is ref_emb:
            return cached[2]
        saved = self.reference.ann_indexes.get(space) if kind == STORED_KIND else None
        if saved is not None:
            index = index_from_array(saved, *ref_emb.shape)
        else:
            index = stored_index(ref_emb, seed) if kind == STORED_KIND else build_index(ref_emb, kind=kind, seed=seed)
            if store and kind == STORED_KIND:
                self.reference.ann_indexes[space] = index_to_array(index)
        self.cache[space] = ((kind, seed), ref_emb, index)
        return index


def find_label_model(state: MappingState, key: str, space: str = FULL) -> LabelModel | None:
    """The calibrated label decision of ``key`` in ``space`` (``None`` for a key that could not be calibrated)."""
    if key in state.uncalibrated.get(space, {}):
        return None
    found = state.label_models.get(space, {}).get(key)
    if found is None:
        raise InputError(f"The model's mapping is not prepared for label key {key!r} ({space} space). Call "
                         "`model.prepare_mapping(reference_adata)` and save the model.")
    return found


# ---------------------------------------------------------------------- preparing the reference
def rna_only_reference(model: Any, adata: ad.AnnData | None, batch_size: int, device: str) -> bool:
    """Embed the reference from RNA alone (AdaBN per source) for RNA-only queries; ``False`` if impossible."""
    from ..train import embed_cells

    reference = model.reference
    if reference.embedding_rna is not None:
        return True
    adata = adata if adata is not None else model.adata
    if adata is None:
        return False
    if adata.n_obs != reference.embedding.shape[0]:
        raise InputError(f"The reference AnnData has {adata.n_obs} cells but the model's reference has "
                         f"{reference.embedding.shape[0]}; pass the AnnData the model was trained on.")
    prepared = model._prepare(adata, what="the reference", use_protein=False)
    prepared, new = new_query_domains(prepared, len(model.setup.sources), all_new=True)
    reference.embedding_rna = embed_cells(model.network, prepared.cells, batch_size=batch_size, device=device,
                                          adapt_domains=new)
    return True


def _ensure_scaled_expression(model: Any, search: ReferenceSearch, adata: ad.AnnData | None, seed: int) -> None:
    """Fit and store the scaled expression space from the reference AnnData (in memory or backed) when it is
    missing (e.g. a model trained without neighbour positives)."""
    if search.scaled() is not None:
        return
    adata = adata if adata is not None else model.adata
    if adata is None or adata.n_obs != len(model.reference.embedding):
        return
    # in memory or on disk alike: fitted on a sample, projected block by block
    fitted = scaled_expression(model._prepare(adata, what="the reference").cells, seed)
    if fitted is not None:  # kept with the reference (saved with the model)
        model.reference.scaled_expression, model.reference.scaled_space = fitted


def _fit_label_models(state: MappingState, search: ReferenceSearch, labels: dict[str, list[str]], space: str,
                      k: int, seed: int) -> None:
    scaled = search.scaled()
    models, failed = state.label_models.setdefault(space, {}), state.uncalibrated.setdefault(space, {})
    for key, names in labels.items():
        try:
            models[key] = fit_label_model(search.embedding(space), search.reference.labels[key], list(names),
                                          search.reference.calibration_rows,
                                          None if scaled is None else scaled[0], k=k, seed=seed)
        except InputError as exc:
            log.warning("The label decision of %r is not calibrated (%s): its cells get the plain vote.", key, exc)
            failed[key] = str(exc)


def prepare_reference(model: Any, state: MappingState, search: ReferenceSearch, adata: ad.AnnData | None, k: int,
                      umap: bool, umap_neighbors: int, umap_min_dist: float, seed: int, batch_size: int,
                      device: str) -> MappingState:
    """Fit into ``state`` (and the model's reference) what :meth:`ReferenceMapper.prepare
    <scconcerto.model.mapper.ReferenceMapper.prepare>` computes; what is already there is kept."""
    reference = model.reference
    if model.setup.proteins and reference.protein is not None:
        if not rna_only_reference(model, adata, batch_size, device):
            log.warning("The reference was not embedded from RNA alone (no reference AnnData): RNA-only queries "
                        "cannot be mapped. Pass the reference AnnData to `prepare_mapping`.")
    _ensure_scaled_expression(model, search, adata, seed)
    for space in search.spaces():
        if space not in state.label_models:
            _fit_label_models(state, search, model.setup.labels, space, k, seed)
        if may_be_approximate(len(reference.embedding)) and not gpu_search_active():
            search.index(space, search.embedding(space), STORED_KIND, seed, store=True)
    scaled = search.scaled()
    if scaled is not None and may_be_approximate(len(scaled[0])) and not gpu_search_active():
        search.index(SCALED_EXPRESSION, scaled[0], STORED_KIND, seed, store=True)
    state.k, state.seed = int(k), int(seed)
    if umap and reference.umap is None:
        reference.umap = umap_of_embedding(reference.embedding, umap_neighbors, umap_min_dist, seed)
        state.umap = UmapSettings(int(umap_neighbors), float(umap_min_dist), int(seed))
    return state
