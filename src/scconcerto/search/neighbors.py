"""k-nearest-neighbour search on embeddings, returning a typed result.

Cosine similarity is the inner product of L2-normalized vectors. Exact searches of arrays are chunked matrix
products with ``torch.topk``, on the CPU or, inside :func:`search_device` with a GPU, there (faiss's GPU build
ships for CUDA 12 only and not on PyPI for our pins); on the CPU this is faster than faiss's ``IndexFlatIP``
(``benchmarks/scale.py search``). Approximate searches (IVF, HNSW) use faiss, the best-kept library for them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import torch

from .._errors import InputError
from .._hardware import resolve_device

IndexKind = Literal["flat", "ivf", "hnsw"]


@dataclass(frozen=True)
class NeighborsResults:
    """Neighbours of each query row.

    Attributes
    ----------
    indices
        ``(n_query, k)`` int64 row numbers into the reference.
    similarities
        ``(n_query, k)`` float32 cosine similarities, best first.
    """

    indices: np.ndarray
    similarities: np.ndarray

    @property
    def n_neighbors(self) -> int:
        return int(self.indices.shape[1])


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization as float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


_search_on: torch.device | None = None
GPU_SEARCH_ELEMENTS = 1 << 29  # similarity entries per chunk of a GPU search (2 GiB in float32)
CPU_SEARCH_ELEMENTS = 1 << 24  # ... and of a CPU search (64 MiB: measured on 10k x 100k, docs in exact_search)
TOPK_BLOCK = 256  # columns per block in the GPU top-k (:func:`_topk_by_blocks`)
#: Exact CPU searches of at most this many query x base pairs are one numpy product (:func:`_small_search`).
SMALL_SEARCH_PAIRS = 4_000_000
GPU_TF32_MIN_PAIRS = 10**10  # query x base pairs from which a CUDA search scores in TF32, then rescores exactly
#: Searches among at least this many base rows are approximate under ``index='auto'`` (:func:`index_kind`) ...
APPROXIMATE_FROM = 1_000_000
#: ... and from this many base rows when the query rows times the base rows reach ``APPROXIMATE_WORK`` pairs.
APPROXIMATE_MIN_REFERENCE = 100_000
APPROXIMATE_WORK = 2e9
#: With an approximate index already built (stored with a reference), searches among ``APPROXIMATE_MIN_REFERENCE``
#: base rows are approximate from this many pairs: below it an exact search takes about a second or less on
#: 2 CPU cores (10k x 10k rows of 128 values: 0.9 s on a shared 2-core machine, 2026-12-06).
PREBUILT_APPROXIMATE_WORK = 1e8


def index_kind(n_base: int, n_query: int, index: str = "auto", approximate: IndexKind = "ivf",
               prebuilt: bool = False) -> str:
    """The faiss index of a search of ``n_query`` rows among ``n_base`` rows: the one exact-vs-approximate rule.

    ``index`` is returned unless it is ``"auto"``. Then the search is exact (``"flat"``) except among
    ``APPROXIMATE_FROM`` base rows, or among ``APPROXIMATE_MIN_REFERENCE`` base rows searched by enough query
    rows that exact search costs more than building and searching an approximate index: then it is
    ``approximate`` (``"ivf"`` for a reference searched by queries, ``"hnsw"`` for the kNN graph of a set of
    cells, which needs no training). A search of a set among itself has ``n_query == n_base``. With
    ``prebuilt`` (the approximate index exists already, e.g. stored with the reference) nothing is built, so the
    search is approximate from ``PREBUILT_APPROXIMATE_WORK`` pairs.
    """
    if index != "auto":
        return index
    work = PREBUILT_APPROXIMATE_WORK if prebuilt else APPROXIMATE_WORK
    large = n_base >= APPROXIMATE_MIN_REFERENCE and float(n_base) * float(n_query) >= work
    return approximate if n_base >= APPROXIMATE_FROM or large else "flat"


def may_be_approximate(n_base: int) -> bool:
    """Whether some search among ``n_base`` rows is approximate under :func:`index_kind` (then an IVF index's
    centroids are worth keeping)."""
    return n_base >= APPROXIMATE_MIN_REFERENCE


def default_nlist(n_reference: int) -> int:
    """Inverted lists of an IVF index over ``n`` rows: about ``4 sqrt(n)``, at least 39 training points per list."""
    return int(max(1, min(4 * np.sqrt(n_reference), n_reference // 39)))


@contextmanager
def search_device(device: str | torch.device | None) -> Iterator[None]:
    """Run the exact searches of arrays inside the block on ``device`` when it is a GPU.

    ``"auto"`` picks CUDA when available; a CPU device (or ``None``) keeps faiss.
    Searches given a built faiss index always use it.
    """
    global _search_on
    previous = _search_on
    dev = resolve_device(device) if device is not None else None
    _search_on = dev if dev is not None and dev.type != "cpu" else None
    try:
        yield
    finally:
        _search_on = previous


def searches_on_its_device(method: Callable) -> Callable:
    """Decorate a function with a ``device`` argument: its exact searches run on that device (:func:`search_device`)."""
    signature = inspect.signature(method)
    default = signature.parameters["device"].default

    @functools.wraps(method)
    def wrapper(*args: object, **kwargs: object) -> object:
        device = signature.bind(*args, **kwargs).arguments.get("device", default)
        with search_device(device):
            return method(*args, **kwargs)

    return wrapper


def gpu_search_active() -> bool:
    """Whether exact searches of arrays currently run on a GPU (:func:`search_device`)."""
    return _search_on is not None


def exact_search(query: np.ndarray, base: np.ndarray, k: int, device: str | torch.device | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of ``query`` rows among ``base`` rows, best first (rows used as given).

    On ``device`` (default: the :func:`search_device`, else the CPU), chunked
    float32 matrix products and ``torch.topk`` (a small search: one numpy
    product); ties may be ordered differently than faiss orders them.
    On CUDA, from ``GPU_TF32_MIN_PAIRS`` query x base pairs (atlases), the
    products run in TF32 and the ``k`` chosen neighbours are rescored and
    ordered in float32: a neighbour can differ from the float32 search only
    where TF32's rounding (about 1e-3) swaps near-ties (``benchmarks/scale.py search``).

    Returns
    -------
    similarities, indices
        ``(n_query, k)`` float32 and int64.
    """
    query = np.ascontiguousarray(query, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    dev = torch.device(device) if device is not None else _search_on
    if dev is None and len(query) * len(base) <= SMALL_SEARCH_PAIRS and 0 < k <= len(base):
        return _small_search(query, base, k)
    dev = torch.device("cpu") if dev is None else dev
    # as faiss: fewer than k base rows pad with index -1 and the lowest float
    sims = np.full((len(query), k), np.finfo(np.float32).min, dtype=np.float32)
    idx = np.full((len(query), k), -1, dtype=np.int64)
    k_eff = min(k, len(base))
    if k_eff == 0 or len(query) == 0:
        return sims, idx
    with torch.no_grad():
        n_base = len(base)
        b = torch.from_numpy(base).to(dev)
        if n_base % TOPK_BLOCK and n_base >= 4 * k_eff * TOPK_BLOCK:  # zero rows up to whole blocks (scored -inf)
            b = torch.cat([b, b.new_zeros(TOPK_BLOCK - n_base % TOPK_BLOCK, b.shape[1])])
        step = max(1, (CPU_SEARCH_ELEMENTS if dev.type == "cpu" else GPU_SEARCH_ELEMENTS) // len(b))
        fast = dev.type != "cpu" and len(query) * n_base >= GPU_TF32_MIN_PAIRS  # (TF32 is CUDA's; elsewhere only the rescoring runs)
        for start in range(0, len(query), step):
            q = torch.from_numpy(query[start:start + step]).to(dev)
            with _tf32_products(fast):
                scores = q @ b.T
            scores[:, n_base:] = float("-inf")
            values, indices = _topk_by_blocks(scores, k_eff)
            if fast:  # exact float32 similarities of the chosen neighbours, best first
                values, order = torch.einsum("qd,qkd->qk", q, b[indices]).sort(dim=1, descending=True)
                indices = torch.gather(indices, 1, order)
            sims[start:start + step, :k_eff] = values.cpu().numpy()
            idx[start:start + step, :k_eff] = indices.cpu().numpy()
    return sims, idx


def _small_search(query: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products by one matrix product (small searches: no thread pool to start or wait on)."""
    scores = query @ base.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < base.shape[0] else np.tile(np.arange(base.shape[0]),
                                                                                            (len(query), 1))
    values = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -values), axis=1)  # best first; ties by row number
    return np.take_along_axis(values, order, 1), np.take_along_axis(top, order, 1).astype(np.int64)


@contextmanager
def _tf32_products(on: bool) -> Iterator[None]:
    """CUDA float32 matrix products in TF32 inside the block (when ``on``)."""
    if not on:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _topk_by_blocks(scores: torch.Tensor, k: int, block: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise exact top-``k`` (best first) of a wide score matrix, through the maxima of column blocks.

    The ``k`` best entries of a row lie in the ``k`` blocks with the largest
    maxima (a block holding one of them but outside those ``k`` would leave ``k``
    larger block maxima, so ``k`` larger entries). One pass takes the block
    maxima; the top-``k`` then runs on ``k * block`` candidates per row instead
    of the whole row. ``scores`` whose width is not a multiple of ``block`` take a plain top-k.
    """
    block = block or TOPK_BLOCK
    n_rows, n_cols = scores.shape
    n_blocks = n_cols // block
    if n_cols % block or n_blocks < 4 * k:  # (exact_search pads to whole blocks)
        return torch.topk(scores, k, dim=1)
    blocks = scores.view(n_rows, n_blocks, block)
    best_blocks = torch.topk(blocks.amax(dim=2), k, dim=1).indices  # (rows, k)
    candidates = torch.gather(blocks, 1, best_blocks.unsqueeze(2).expand(-1, -1, block)).reshape(n_rows, k * block)
    values, where = torch.topk(candidates, k, dim=1)
    columns = torch.gather(best_blocks, 1, where // block) * block + where % block
    return values, columns


def build_index(reference: np.ndarray, kind: IndexKind = "flat", nlist: int | None = None,
                nprobe: int = 16, hnsw_m: int = 32, seed: int = 0) -> faiss.Index:
    """Build a faiss inner-product index over L2-normalized ``reference`` rows.

    ``flat`` is exact; ``ivf`` (inverted lists, trained by k-means) and
    ``hnsw`` (graph) are approximate and meant for references of millions of cells.
    """
    ref = l2_normalize(reference)
    n, d = ref.shape
    if n == 0:
        raise InputError("The reference embedding is empty: there is nothing to search.")
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(d)
        nlist = nlist or default_nlist(n)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(ref)
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:
        raise InputError(f"Unknown index kind {kind!r}; use 'flat', 'ivf' or 'hnsw'.")
    index.add(ref)
    return index


def knn(query: np.ndarray, reference: np.ndarray | faiss.Index, k: int = 5,
        exclude_self: bool = False, kind: IndexKind = "flat", self_rows: np.ndarray | None = None
        ) -> NeighborsResults:
    """Cosine k-NN of ``query`` rows among ``reference`` rows (or a built index).

    With ``exclude_self`` each query row's own match is removed (the k neighbours
    are the k nearest *other* rows): the query is the reference itself, or, given
    ``self_rows``, query row ``i`` is reference row ``self_rows[i]``.
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    extra = 1 if exclude_self else 0
    q = l2_normalize(query)
    if isinstance(reference, faiss.Index):
        k_eff = min(k + extra, reference.ntotal)
        sims, idx = reference.search(q, k_eff)
    elif kind == "flat" or gpu_search_active():  # exact (on the GPU whatever ``kind``)
        k_eff = min(k + extra, len(reference))
        sims, idx = exact_search(q, l2_normalize(reference), k_eff)
    else:
        index = build_index(reference, kind)
        k_eff = min(k + extra, index.ntotal)
        sims, idx = index.search(q, k_eff)
    if exclude_self:
        own_rows = np.arange(len(q)) if self_rows is None else np.asarray(self_rows, dtype=np.int64)
        own = idx == own_rows[:, None]
        # drop the own match if present, else the last (worst) column
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k_eff - 1)
        keep = np.ones_like(idx, dtype=bool)
        keep[np.arange(len(q)), drop] = False
        idx = idx[keep].reshape(len(q), k_eff - 1)
        sims = sims[keep].reshape(len(q), k_eff - 1)
    return NeighborsResults(indices=idx.astype(np.int64), similarities=sims.astype(np.float32))
