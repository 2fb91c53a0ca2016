"""Neighbour positives: the student view of a cell is drawn from one of its nearest cells.

With the paper's views (two dropout views of the same cell) a small reference is
learnt by heart: after enough epochs the embedding separates every cell from
every other one by its own "barcode" of expressed genes, not by its type
(symphony PBMC, 1,200 cells: held-out kNN accuracy falls as training goes on).
Drawing the student's input from one of the cell's ``k`` nearest neighbours in
expression space (the nearest-neighbour positives of NNCLR, Dwibedi et al. 2021,
and of several single-cell contrastive methods) makes the task "recognise a
similar cell", which cannot be solved by memorizing one cell.

Neighbours are searched

* in a low-rank sketch of the expression, fitted on a seeded sample of cells (read from
  disk in bounded runs when the matrix is backed) and applied block by block to every
  cell (the matrix is never densified), cosine similarity through faiss. By default the
  model searches the centred and the scaled expression spaces side by side
  (:mod:`scconcerto.data.scaled_space`; :func:`joint_components`: the mean of the two
  cosine similarities); models trained before 2026-12-08 used the uncentred truncated SVD
  of the normalized values here (:func:`expression_space`, at most ``svd_cells`` cells)
  in place of the centred space. The sketch is the same whether the cells are in memory
  or on disk;
* among the cells at hand (:class:`PositiveSearch`): all training cells when they are
  in memory, the cells of the window being trained on when they are streamed from disk
  (a window holds every cell of a reference of up to ``chunk_size * window_chunks``
  cells, 32,768 by default, and a random third of a 100k-cell one), as NNCLR draws
  positives from a support set of recent cells;
* among the cells of every source (``across_sources=True``, the model's default since
  2026-12-07): a cell whose nearest cell in expression is of another source (a
  stimulated cell next to its control counterpart) is drawn as its positive, which pulls
  the sources together where their cells already agree, while the source-specific batch
  normalization removes the technical shift between them. Before, positives were
  searched within each source only (``across_sources=False``); the choice was measured
  on development data (``benchmarks/ABLATIONS_POSITIVES.md``);
* optionally ranked by shared neighbours (``candidates``; the model's ``positive_rank="shared"``): a
  cell's positives are the ``k`` of its ``candidates`` nearest cells that share most of its
  ``candidates`` nearest cells (the shared-nearest-neighbour similarity of Jarvis and Patrick
  1973, which Seurat and scran build their cell graphs on), nearer ones first among ties. A
  cell on the edge of its type, whose nearest cells in expression include cells of the next
  type, shares fewer neighbours with those: its positives are more often of its own type.
  By default they are its ``k`` nearest cells (``candidates=0``); the choice was measured on
  development data (``benchmarks/ABLATIONS_RANK.md``, ``docs/design.md``);
* when reference labels are given, among cells of the same label too (a
  label-aware positive, like the label use of scANVI): the labels shape the
  embedding, which then separates the reference's types much better. Cells in
  ``open_rows`` ignore the labels (they search all the cells at hand), so
  that they are embedded as an unlabeled query would be: mapping confidence is
  calibrated on them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .._hardware import available_cpus
from .._random import sample_rows
from ..search.neighbors import index_kind, knn, l2_normalize
from .cells import CellMatrix

DEFAULT_COMPONENTS = 50
#: Nearest cells among which positives are ranked by shared neighbours (:class:`PositiveSearch`); 50 measured
#: alike on development data (``docs/design.md``).
SHARED_CANDIDATES = 30
DEFAULT_SVD_CELLS = 20_000
_BLOCK_ROWS = 20_000


def expression_components(cells: CellMatrix, n_components: int = DEFAULT_COMPONENTS,
                          svd_cells: int = DEFAULT_SVD_CELLS, seed: int = 0) -> np.ndarray:
    """``(n_cells, c)`` float32: each cell's normalized expression in a truncated-SVD space (L2-normalized rows)."""
    return expression_space(cells, n_components, svd_cells, seed)[0]


def expression_space(cells: CellMatrix, n_components: int = DEFAULT_COMPONENTS,
                     svd_cells: int = DEFAULT_SVD_CELLS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The cells in a truncated-SVD space of their normalized expression, and its loadings.

    Returns
    -------
    components
        ``(n_cells, c)`` float32, L2-normalized rows (see :func:`expression_components`).
    loadings
        ``(n_vocabulary_genes, c)`` float32: :func:`project_expression` places other
        cells (a query aligned to the same vocabulary) in the same space.
    """
    from sklearn.decomposition import TruncatedSVD

    n = cells.n_cells
    n_genes = _vocabulary_width(cells)
    fit_rows = sample_rows(n, svd_cells, seed)  # all cells (in order) when there are at most svd_cells
    fit_block = _csr_of(cells, fit_rows, n_genes)
    n_comp = int(max(1, min(n_components, min(fit_block.shape) - 1)))
    svd = TruncatedSVD(n_comp, algorithm="randomized", random_state=seed).fit(fit_block)
    loadings = svd.components_.T.astype(np.float32)  # genes x c
    return project_expression(cells, loadings), loadings


def joint_components(*spaces: np.ndarray) -> np.ndarray:
    """The cells in several spaces side by side: ``(n_cells, total width)`` float32.

    Each space's rows are L2-normalized and divided by the square root of the number of
    spaces, so the inner product of two rows is the mean of their cosine similarities in the
    spaces (and the rows have unit norm).
    """
    if not spaces or len({len(z) for z in spaces}) != 1:
        raise ValueError("joint_components needs at least one space, all with the same cells")
    scale = 1.0 / np.sqrt(len(spaces))
    return np.hstack([l2_normalize(z) * scale for z in spaces]).astype(np.float32)


def _vocabulary_width(cells: CellMatrix) -> int:
    col = cells.column_to_vocab
    return int(cells.X.shape[1] if col is None else max(int(col.max()) + 1, 1))


def project_expression(cells: CellMatrix, loadings: np.ndarray, offset: np.ndarray | None = None,
                       caps: np.ndarray | None = None, rows: np.ndarray | None = None,
                       remove_direction: np.ndarray | None = None) -> np.ndarray:
    """``(n_cells, c)`` float32: the cells' normalized expression times ``loadings``, L2-normalized rows.

    With ``caps`` (one per gene) values above them are clipped first; ``offset`` (one per
    component) is subtracted from the product; the component of each product along ``remove_direction`` (one
    per component, any length) is removed. ``rows``: only these cells, in this order. Block by block
    (never densified), blocks in threads.
    """
    chosen = np.arange(cells.n_cells) if rows is None else np.asarray(rows, dtype=np.int64)
    n, n_comp = len(chosen), loadings.shape[1]
    n_genes = loadings.shape[0]
    if _vocabulary_width(cells) > n_genes:
        raise ValueError(f"the cells use {_vocabulary_width(cells)} vocabulary genes, the loadings {n_genes}")
    out = np.empty((n, n_comp), dtype=np.float32)

    def project(start: int) -> None:  # scipy's sparse products release the GIL: blocks run in threads
        at = np.arange(start, min(n, start + _BLOCK_ROWS))
        block = _csr_of(cells, chosen[at], n_genes)
        if caps is not None:
            block.data = np.minimum(block.data, caps[block.indices])
        out[at] = np.asarray(block @ loadings, dtype=np.float32)

    starts = range(0, n, _BLOCK_ROWS)
    if len(starts) > 1:
        with ThreadPoolExecutor(min(len(starts), available_cpus(cap=16))) as pool:
            list(pool.map(project, starts))
    else:
        project(0)
    if offset is not None:
        out -= np.asarray(offset, dtype=np.float32)
    if remove_direction is not None:
        unit = np.asarray(remove_direction, dtype=np.float64)
        norm = float(np.linalg.norm(unit))
        if norm > 0:
            unit = (unit / norm).astype(np.float32)
            out -= np.outer(out @ unit, unit)
    out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-12
    return out


def _csr_of(cells: CellMatrix, rows: np.ndarray, n_genes: int) -> sp.csr_matrix:
    indices, values, offsets = cells.rna_rows(rows)
    return sp.csr_matrix((values.astype(np.float32), indices, offsets), shape=(len(rows), n_genes))


@dataclass(frozen=True)
class PositiveSearch:
    """Where a cell's neighbour positives are found: its ``k`` nearest cells among the cells at hand.

    In memory the cells at hand are all the training cells (:func:`neighbor_positives`, searched once);
    streamed from disk they are the cells of the window being trained on
    (:class:`~scconcerto.data.streaming.StreamingBatches` searches each window as it is read), so the
    same search serves every size and memory follows the window. Only the cells' coordinates in the
    expression sketch are kept for all cells (``components``: ``4 * d`` bytes a cell).

    Attributes
    ----------
    k
        Neighbours per cell.
    components
        ``(n_cells, d)`` float32: every cell in the expression sketch (unit rows; cosine similarity).
    groups
        ``(n_cells,)`` int64 group codes (label groups); a cell with a code ``>= 0`` searches the cells
        with the same code, a cell with ``-1`` (unlabeled, or in the calibration hold-out) all of them
        (of its own source only, unless ``across_sources``). ``None``: every cell searches them all.
    across_sources
        Search the cells of every source; ``False``: of the cell's own source only.
    candidates
        Above ``k``: the positives are the ``k`` of a cell's ``candidates`` nearest cells that share most of
        its ``candidates`` nearest cells (:func:`shared_neighbour_rank`); otherwise its ``k`` nearest.
    """

    k: int
    components: np.ndarray
    groups: np.ndarray | None = None
    across_sources: bool = False
    candidates: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.candidates < 0:
            raise ValueError(f"candidates must be at least 0, got {self.candidates}")
        if self.groups is not None and len(self.groups) != len(self.components):
            raise ValueError(f"groups must hold one code per cell ({len(self.components)}), got {len(self.groups)}")

    def among(self, rows: np.ndarray, domains: np.ndarray) -> np.ndarray:
        """Positives of the cells ``rows`` among themselves: ``(len(rows), k)`` positions into ``rows``.

        ``domains`` are the cells' source codes (same order as ``rows``; ignored when searching across
        sources). A cell never is its own positive unless it is alone in its group; groups with fewer
        than ``k + 1`` cells repeat members.
        """
        rows = np.asarray(rows, dtype=np.int64)
        codes = np.full(len(rows), -1, dtype=np.int64) if self.groups is None else self.groups[rows]
        domains = np.zeros(len(rows), dtype=np.int64) if self.across_sources else np.asarray(domains, dtype=np.int64)
        if self.candidates <= self.k:
            return _search(self.components[rows], domains, codes, self.k)
        return shared_neighbour_rank(_search(self.components[rows], domains, codes, self.candidates), self.k)


def shared_neighbour_rank(nearest: np.ndarray, k: int, block_rows: int = 4096) -> np.ndarray:
    """Each row's ``k`` candidates that share most of its candidates: ``(n, k)`` positions.

    ``nearest`` is ``(n, m)``: each row's ``m`` nearest rows, nearest first. Two rows share a neighbour when
    it is among both lists (each row counts as its own neighbour); among candidates that share as many, the
    nearer comes first. Sparse products over blocks of rows: memory grows with ``block_rows * m**2``.
    """
    nearest = np.asarray(nearest, dtype=np.int64)
    n, m = nearest.shape
    if k >= m:
        return nearest[:, :k]
    rows = np.repeat(np.arange(n, dtype=np.int64), m + 1)
    cols = np.hstack([np.arange(n, dtype=np.int64)[:, None], nearest]).ravel()
    graph = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(n, n))
    graph.sum_duplicates()
    graph.data[:] = 1.0  # a row listed twice (a small group repeats its members) is one neighbour
    order = np.arange(m, dtype=np.float64) / m  # below one shared neighbour: breaks ties by nearness only
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block_rows):
        block = np.arange(start, min(n, start + block_rows))
        shared = (graph[block] @ graph.T).tocsr()
        counts = np.asarray(shared[np.repeat(np.arange(len(block)), m), nearest[block].ravel()], dtype=np.float64)
        score = counts.reshape(len(block), m) - order[None, :]
        best = np.argsort(-score, axis=1, kind="stable")[:, :k]
        out[block] = np.take_along_axis(nearest[block], best, axis=1)
    return out


def _search(z: np.ndarray, domains: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` positions: each row's ``k`` nearest rows of its domain (and code, when ``>= 0``)."""
    n = len(z)
    out = np.repeat(np.arange(n, dtype=np.int64)[:, None], k, axis=1)
    for d in np.unique(domains):
        in_domain = np.flatnonzero(domains == d)
        for code in np.unique(codes[in_domain]):
            rows = in_domain[codes[in_domain] == code]
            base = in_domain if code < 0 else rows  # unlabeled / open cells search their whole source
            if len(base) < 2:
                continue
            kind = index_kind(len(base), len(rows), approximate="hnsw")
            hits = knn(z[rows], z[base], k, exclude_self=True, kind=kind,
                       self_rows=np.searchsorted(base, rows)).indices
            hits = np.where(hits < 0, hits[:, :1], hits)  # an approximate index may return fewer hits than asked
            out[rows] = base[hits[:, np.arange(k) % hits.shape[1]]]
    return out


def positive_codes(n_cells: int, labels: np.ndarray | None = None, open_rows: np.ndarray | None = None
                   ) -> np.ndarray | None:
    """The group codes of :class:`PositiveSearch`: ``labels`` with the ``open_rows`` set to ``-1``."""
    if labels is None:
        return None
    codes = np.asarray(labels, dtype=np.int64).copy()
    if codes.shape != (n_cells,):
        raise ValueError(f"labels must hold one code per cell ({n_cells}), got shape {codes.shape}")
    if open_rows is not None:
        codes[np.asarray(open_rows, dtype=np.int64)] = -1
    return codes


def neighbor_positives(cells: CellMatrix, k: int = 10, labels: np.ndarray | None = None,
                       open_rows: np.ndarray | None = None, n_components: int = DEFAULT_COMPONENTS,
                       seed: int = 0, components: np.ndarray | None = None,
                       across_sources: bool = False, candidates: int = 0) -> np.ndarray:
    """Candidate positives of every cell among all of them: ``(n_cells, k)`` row numbers.

    Parameters
    ----------
    cells
        The training cells (in memory or on disk).
    k
        Neighbours per cell. Groups with fewer cells repeat their members; a cell
        alone in its group is its own positive.
    labels
        ``(n_cells,)`` integer group codes (e.g. label codes; ``-1`` = unlabeled).
        Labeled cells search only cells with the same code; unlabeled cells search all (of their own
        source unless ``across_sources``).
    open_rows
        Labeled cells that search as if unlabeled (the calibration hold-out).
    n_components
        Width of the truncated-SVD space.
    seed
        Seed of the SVD.
    components
        The cells' expression components, if already computed (:func:`expression_space`).
    across_sources
        Search the cells of every source; ``False``: of each cell's own source only.
    candidates
        Rank this many nearest cells by shared neighbours (:class:`PositiveSearch`); ``0``: the ``k`` nearest.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n = cells.n_cells
    codes = positive_codes(n, labels, open_rows)
    col = cells.column_to_vocab
    n_genes = int(cells.X.shape[1] if col is None else int((col >= 0).sum()))
    if n < 3 or n_genes < 2:  # nothing to search: every cell is its own positive
        return np.repeat(np.arange(n, dtype=np.int64)[:, None], k, axis=1)
    z = expression_components(cells, n_components, seed=seed) if components is None else components
    return PositiveSearch(k, z, codes, across_sources, candidates).among(np.arange(n), cells.domains)
