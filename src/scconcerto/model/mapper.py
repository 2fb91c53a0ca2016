"""The mapping of query cells onto a trained model's reference, as a class of its own.

:class:`ReferenceMapper` reads a :class:`~scconcerto.Concerto` model (its network, gene setup and reference
cells) and holds what mapping fitted on the reference (:class:`~._reference.MappingState`: the calibrated label
decisions, their unknown thresholds, the UMAP settings) and the in-memory search indexes. Its parts, one file
each: preparing the reference (:mod:`._reference`), embedding a query in the reference space
(:mod:`._query_embedding`), and mapping (:mod:`._mapping`); the algorithm itself lives in
:mod:`scconcerto.mapping`, :mod:`scconcerto.search` and :mod:`scconcerto.tools`. Mapping never changes the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._mapping import MappingMixin, MappingResult
from ._reference import MappingState

if TYPE_CHECKING:
    import anndata as ad

    from ..data.setup import PreparedCells

__all__ = ["MappingResult", "MappingState", "ReferenceMapper"]


class ReferenceMapper(MappingMixin):
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
        prepared = "not prepared" if self.state is None else f"label keys {list(self.setup.labels)}"
        return f"ReferenceMapper({prepared})"

    # ------------------------------------------------------------------ what it reads of the model
    network = property(lambda self: self.model.network, doc="The model's network (read, never changed).")
    setup = property(lambda self: self.model.setup, doc="The model's gene setup, sources and labels.")
    reference = property(lambda self: self.model.reference, doc="The model's reference cells (ReferenceStore).")
    seed = property(lambda self: self.model.seed, doc="The model's seed (default of mapping's seeds).")
    train_config = property(lambda self: self.model.train_config, doc="How the model was trained.")
    adata = property(lambda self: self.model.adata, doc="The reference AnnData the model was built on, if attached.")
    model_id = property(lambda self: self.model.model_id, doc="The model's fingerprint.")

    @property
    def last_alignment(self) -> Any:
        return self.model.last_alignment

    @last_alignment.setter
    def last_alignment(self, alignment: Any) -> None:
        self.model.last_alignment = alignment

    def _prepare(self, adata: "ad.AnnData", *args: Any, **kwargs: Any) -> "PreparedCells":
        return self.model._prepare(adata, *args, **kwargs)
