"""The common interface of every benchmarked method, and the data views they share.

A method is fitted on a labelled reference, then maps a query: predicted labels with a
confidence in [0, 1], and a query embedding in the reference space (``None`` for methods
without one, e.g. CellTypist). ``embed_reference`` returns the reference cells' embedding
(integration and clustering tasks).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import NamedTuple

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from .._clock import cpu_seconds


@dataclass
class Split:
    """One reference/query pair of a task, on the genes both share.

    Attributes
    ----------
    task, name
        Task and split names (``"label_transfer"``, ``"symphony_pbmc_3tech:held=5p"``).
    reference, query
        AnnData with ``X`` as described by ``is_counts``; ``obs[label_key]`` and ``obs[batch_key]``.
    label_key, batch_key
        Columns of ``obs``.
    is_counts
        ``True`` when ``X`` holds counts, ``False`` when it is already log-normalized.
    """

    task: str
    name: str
    reference: ad.AnnData
    query: ad.AnnData
    label_key: str = "cell_type"
    batch_key: str = "batch"
    is_counts: bool = True
    notes: list[str] = field(default_factory=list)


@dataclass
class Mapping:
    """What a method returns for a query.

    Attributes
    ----------
    labels
        ``(n_query,)`` predicted labels (strings).
    confidence
        ``(n_query,)`` confidence in [0, 1] of each prediction.
    embedding
        ``(n_query, d)`` query embedding in the reference space, or ``None``.
    """

    labels: np.ndarray
    confidence: np.ndarray
    embedding: np.ndarray | None = None


class Method(ABC):
    """A benchmarked method: fit a reference, embed it, map a query."""

    name: str = "method"
    has_embedding: bool = True

    def __init__(self, epochs: int | None = None, seed: int = 0, k: int = 5) -> None:
        self.epochs = epochs
        self.seed = seed
        self.k = k

    @abstractmethod
    def fit(self, reference: ad.AnnData, label_key: str, batch_key: str | None, is_counts: bool) -> None:
        """Build the reference model from labelled cells."""

    @abstractmethod
    def map(self, query: ad.AnnData, batch_key: str | None) -> Mapping:
        """Annotate the query (same genes as the reference) and embed it."""

    def embed_reference(self) -> np.ndarray | None:
        """The fitted reference cells' embedding (``None`` without one)."""
        return None

    def extra_embeddings(self) -> dict[str, np.ndarray]:
        """Other embeddings of the reference cells the fit produced on the way, by method name
        (e.g. scANVI's scVI pre-training model: ``{"scvi": ...}``)."""
        return {}

    def epochs_text(self) -> str | None:
        """The training epochs actually used, for the tables (``None`` for untrained methods)."""
        used = getattr(self, "epochs_used", None)
        if not used:
            return None
        return ",".join(f"{k}={v}" for k, v in used.items()) if isinstance(used, dict) else str(used)


def lognorm(adata: ad.AnnData, is_counts: bool) -> ad.AnnData:
    """A copy with ``X`` = log1p(CP10K) float32 CSR (already log-normalized input is kept)."""
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    if np.int64 in (x.indices.dtype, x.indptr.dtype) and x.nnz < np.iinfo(np.int32).max:
        # h5ad files of large matrices carry 64-bit indices, which scikit-learn's sparse kernels refuse
        x = sp.csr_matrix((x.data, x.indices.astype(np.int32), x.indptr.astype(np.int32)), shape=x.shape)
    out = ad.AnnData(X=x, obs=adata.obs.copy(), var=adata.var[[]].copy())
    if is_counts:
        sc.pp.normalize_total(out, target_sum=1e4)
        sc.pp.log1p(out)
    else:
        out.uns["log1p"] = {"base": None}
    return out


#: No natural-log CP10K or CPM value exceeds ln(1e6 + 1) = 13.8; log-normalized input above it is log2
#: (scClassify's pancreas: log2 CPM-like, maximum 18.5).
NATURAL_LOG_MAX = float(np.log1p(1e6))


def unlog(values: np.ndarray) -> np.ndarray:
    """Undo the log of log-normalized values: ``expm1`` for a natural log, ``2**x - 1`` when the values
    exceed what a natural log can give (:data:`NATURAL_LOG_MAX`)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size and float(values.max()) > NATURAL_LOG_MAX:
        return np.exp2(values) - 1.0
    return np.expm1(values)


def counts(adata: ad.AnnData, is_counts: bool) -> ad.AnnData:
    """A copy with integer-valued counts in ``X`` (pseudo-counts ``rint(unlog(x))`` for log-normalized input)."""
    x = sp.csr_matrix(adata.X, dtype=np.float32, copy=True)
    if not is_counts:
        x.data = np.rint(unlog(x.data)).astype(np.float32)
        x.eliminate_zeros()
    else:
        x.data = np.rint(x.data)
    return ad.AnnData(X=x, obs=adata.obs.copy(), var=adata.var[[]].copy())


def knn_transfer(query_emb: np.ndarray, ref_emb: np.ndarray, ref_labels: np.ndarray, k: int) -> Mapping:
    """Similarity-weighted cosine k-NN vote (the same rule scConcerto uses), with its vote confidence."""
    from scconcerto.tools import knn, vote

    cats, codes = np.unique(np.asarray(ref_labels, dtype=str), return_inverse=True)
    transfer = vote(knn(np.ascontiguousarray(query_emb, dtype=np.float32),
                        np.ascontiguousarray(ref_emb, dtype=np.float32), k), codes, len(cats))
    return Mapping(cats[transfer.codes], np.clip(transfer.confidence, 0, 1), query_emb)


class TimedMapping(NamedTuple):
    """A peer's mapping with the wall and process CPU seconds of its fit and its map."""

    mapping: Mapping
    fit_s: float
    map_s: float
    fit_cpu_s: float
    map_cpu_s: float


def timed_fit_map(method: Method, reference: ad.AnnData, query: ad.AnnData, label_key: str,
                  batch_key: str | None, is_counts: bool) -> TimedMapping:
    """Fit ``method`` on ``reference`` and map ``query``, timing each step in wall and process CPU seconds."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    method.fit(reference, label_key, batch_key, is_counts)
    fit_s, fit_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    mapping = method.map(query, batch_key)
    return TimedMapping(mapping, fit_s, time.perf_counter() - t0, fit_cpu, cpu_seconds() - cpu0)
