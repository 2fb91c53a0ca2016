"""Query-to-reference mapping (label transfer, confidence, imputation, hierarchy)."""

from __future__ import annotations


class MappingMixin:
    """Query-to-reference mapping (label transfer, confidence, imputation, hierarchy). Mixed into :class:`~scconcerto.model.Concerto`."""
