"""Which model a query was mapped or annotated with, recorded in the query for plots and reports."""

from __future__ import annotations

import hashlib
from typing import Any

import anndata as ad
import torch

from .._keys import MAPPING_UNS


def record_model_id(model: Any, adata: ad.AnnData, uns_key: str = MAPPING_UNS) -> None:
    """Add ``model.model_id`` to ``adata.uns[uns_key]`` (when the record exists)."""
    record = adata.uns.get(uns_key)
    if isinstance(record, dict):
        record["model_id"] = model.model_id


def weights_fingerprint(network: torch.nn.Module) -> str:
    """16 hex digits of the SHA-256 of ``network``'s parameters and buffers, by name: the same after save and load."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
