"""Approximate neighbour search for atlas-size references and its recall against exact search.

Exact inner-product search costs ``n_query x n_reference x d``: 10^5 queries
against 10^6 reference cells is 1.3 x 10^13 multiply-adds, far too slow on a
CPU. An inverted-file index (faiss ``IndexIVFFlat``) clusters the reference
into ``nlist`` cells and scans only the ``nprobe`` clusters nearest to each
query; :func:`recall_at_k` measures what that costs in accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import faiss
import numpy as np

from .._errors import InputError
from .._random import sample_rows
from .neighbors import IndexKind, NeighborsResults, build_index, default_nlist, index_kind, knn, l2_normalize


def ann_index(reference: np.ndarray, kind: IndexKind | str = "auto", nlist: int | None = None, nprobe: int = 16,
              train_size: int | None = None, seed: int = 0, n_query: int | None = None) -> faiss.Index:
    """A faiss inner-product index over the L2-normalized ``reference`` rows.

    Parameters
    ----------
    kind
        ``"flat"`` (exact), ``"ivf"``, ``"hnsw"``, or ``"auto"``: the rule of
        :func:`~scconcerto.search.index_kind` (IVF when approximate).
    nlist
        IVF lists (default :func:`default_nlist`).
    nprobe
        IVF lists scanned per query.
    train_size
        Reference rows (a seeded sample) used to train the IVF k-means;
        default ``64 * nlist``, enough for faiss and far cheaper than all rows.
    n_query
        Query rows the index will serve, for ``"auto"`` (default: as many as reference rows).
    """
    reference = np.asarray(reference)
    n = reference.shape[0]
    if n == 0:
        raise InputError("The reference embedding is empty: there is nothing to search.")
    kind = index_kind(n, n if n_query is None else n_query, kind, approximate="ivf")
    if kind != "ivf":
        return build_index(reference, kind)  # type: ignore[arg-type]
    ref = l2_normalize(reference)
    nlist = nlist or default_nlist(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(ref.shape[1]), ref.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    size = min(n, train_size or 64 * nlist)
    sample = ref if size >= n else ref[sample_rows(n, size, seed)]
    index.train(sample)
    index.add(ref)
    index.nprobe = min(nprobe, nlist)
    return index


@dataclass(frozen=True)
class RecallReport:
    """Approximate vs exact search on the same queries."""

    recall: float
    k: int
    n_reference: int
    n_query: int
    build_seconds: float
    search_seconds: float
    exact_search_seconds: float

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def neighbor_recall(approx: NeighborsResults, exact: NeighborsResults) -> float:
    """Mean fraction of each query's exact k neighbours that the approximate search found."""
    k = exact.indices.shape[1]
    found = (approx.indices[:, :, None] == exact.indices[:, None, :]).any(axis=1)
    return float(found.sum() / (exact.indices.shape[0] * k))


def recall_at_k(reference: np.ndarray, queries: np.ndarray, k: int = 5, kind: str = "ivf",
                **index_options: object) -> RecallReport:
    """Recall@k of an approximate index against exact (flat) search on ``queries``."""
    t0 = time.perf_counter()
    index = ann_index(reference, kind, **index_options)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    approx = knn(queries, index, k)
    t2 = time.perf_counter()
    exact = knn(queries, build_index(reference, "flat"), k)
    t3 = time.perf_counter()
    return RecallReport(neighbor_recall(approx, exact), k, int(reference.shape[0]), int(queries.shape[0]),
                        t1 - t0, t2 - t1, t3 - t2)


# ------------------------------------------------------------------------------------------------ stored indexes
#: The approximate index kept with a large reference (:func:`stored_index`): an IVF index, trained once ...
STORED_KIND: IndexKind = "ivf"
#: ... with ``default_nlist`` lists, of which each query scans this many: chosen on the 100k-cell hard simulation,
#: how and with what recall in ``docs/scale.md`` (``benchmarks/scale.py map-query`` reports each run's recall).
IVF_NPROBE = 16
_STORED_TYPES = (faiss.IndexIVFFlat, faiss.IndexHNSWFlat)


def index_to_array(index: faiss.Index) -> np.ndarray:
    """The faiss index as bytes (``faiss.serialize_index``: faiss's own ``write_index`` format, no pickle), to
    be saved with the model."""
    return np.asarray(faiss.serialize_index(index), dtype=np.uint8)


def index_from_array(data: np.ndarray, n_rows: int, dim: int, nprobe: int | None = None) -> faiss.Index:
    """The faiss index saved by :func:`index_to_array`, checked to be an inner-product IVF-Flat or HNSW-Flat
    index over ``n_rows`` rows of ``dim`` values (the reference it was built for).

    Raises
    ------
    InputError
        The bytes are not such an index (damaged, or built for another reference).
    """
    fix = ("The model's saved search index is damaged or belongs to another reference; prepare the mapping "
           "again: `model.prepare_mapping(reference_adata, overwrite=True)`, then save the model.")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 1 or data.size == 0:
        raise InputError(f"{fix} (it is not a byte array)")
    try:
        index = faiss.deserialize_index(np.ascontiguousarray(data))  # (the most derived index class)
    except (RuntimeError, ValueError, TypeError, MemoryError) as exc:
        raise InputError(f"{fix} (faiss could not read it: {str(exc).splitlines()[0] if str(exc) else exc})") \
            from exc
    if not isinstance(index, _STORED_TYPES) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise InputError(f"{fix} (it is a {type(index).__name__}, not an inner-product IVF-Flat or HNSW-Flat index)")
    if index.d != dim or index.ntotal != n_rows:
        raise InputError(f"{fix} (it holds {index.ntotal} rows of {index.d} values; the reference has {n_rows} "
                         f"rows of {dim})")
    if isinstance(index, faiss.IndexIVFFlat):
        index.nprobe = min(nprobe or IVF_NPROBE, index.nlist)
    return index


def stored_index(reference: np.ndarray, seed: int = 0) -> faiss.Index:
    """The approximate index kept with a large reference: IVF-Flat, ``IVF_NPROBE`` lists probed."""
    return ann_index(reference, STORED_KIND, nprobe=IVF_NPROBE, seed=seed)
