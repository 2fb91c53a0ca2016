"""Which model a query was mapped or annotated with, recorded in the query for plots and reports."""

from __future__ import annotations

from typing import Any

import anndata as ad

from .._keys import MAPPING_UNS


def record_model_id(model: Any, adata: ad.AnnData, uns_key: str = MAPPING_UNS) -> None:
    """Add ``model.model_id`` to ``adata.uns[uns_key]`` (when the record exists)."""
    record = adata.uns.get(uns_key)
    if isinstance(record, dict):
        record["model_id"] = model.model_id
