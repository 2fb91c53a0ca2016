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
    from ..nn import ConcertoNetwork
    from ..train import TrainConfig
    from .storage import ReferenceStore

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
    @property
    def network(self) -> "ConcertoNetwork":
        return self.model.network

    @property
    def setup(self) -> Any:
        return self.model.setup

    @property
    def reference(self) -> "ReferenceStore | None":
        return self.model.reference

    @property
    def seed(self) -> int:
        return self.model.seed

    @property
    def train_config(self) -> "TrainConfig | None":
        return self.model.train_config

    @property
    def adata(self) -> "ad.AnnData | None":
        return self.model.adata

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def last_alignment(self) -> Any:
        return self.model.last_alignment

    @last_alignment.setter
    def last_alignment(self, alignment: Any) -> None:
        self.model.last_alignment = alignment

    def _prepare(self, adata: "ad.AnnData", *args: Any, **kwargs: Any) -> "PreparedCells":
        return self.model._prepare(adata, *args, **kwargs)
