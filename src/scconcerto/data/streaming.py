"""Streaming training batches from an on-disk dataset: chunk windows read ahead in the background.

Each epoch the rows are cut into contiguous chunks whose order is shuffled;
consecutive shuffled chunks form a *window* that is read from disk in one go
(:func:`~scconcerto.data.sampling.chunk_windows`). Inside a window the cells of
each source are shuffled and cut into full single-source batches
(:func:`~scconcerto.data.sampling.full_source_batches`); the few cells left over
per source are carried into the next window, and the last window's cells are
split into near-equal batches. So a batch mixes cells from ``window_chunks``
random places of the file, every cell is seen once per epoch, each source gives
``ceil(n / batch_size)`` batches whatever the windows are, and at most a few
windows are in memory: peak memory grows with ``chunk_size * window_chunks``,
not with the number of cells. Under ``torch.distributed`` each rank reads only
its own chunks. With neighbour positives (``cells.positive_search``) each window's
cells find theirs among the window (:class:`~scconcerto.data.positives.PositiveSearch`):
the student view is a cell already read, so positives cost no extra reads.

A file that fits in one window (``chunk_size * window_chunks`` cells, one process)
is the in-memory case: its cells are taken in row order and cut into the batches of
:class:`~scconcerto.data.sampling.SourceBatchSampler`, with the same augmentation
seeds, so training from disk and from memory is the same computation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch.utils.data

from .._ragged import CellBatch
from .backed import BackedCSR, prefetch, release_freed_memory
from .cells import CellMatrix
from .sampling import chunk_windows, full_source_batches, rank_batch_counts, source_batches, window_rows

#: Default rows per chunk and chunks per window (about 32k cells, ~100 MB for 400 genes a cell).
DEFAULT_CHUNK_SIZE = 4096
DEFAULT_WINDOW_CHUNKS = 8


def load_window(cells: CellMatrix, window: list[tuple[int, int]]) -> CellMatrix:
    """The cells of ``window`` with their expression read into memory (one read per chunk)."""
    rows = window_rows(window)
    if isinstance(cells.X, BackedCSR):
        X = sp.vstack([cells.X.read_rows(a, b) for a, b in window], format="csr") if len(window) > 1 \
            else cells.X.read_rows(*window[0])
    else:
        X = cells.X[rows]
    protein = cells.protein[rows] if cells.protein is not None else None
    return CellMatrix(X, cells.column_to_vocab, cells.totals[rows], cells.kind, cells.domains[rows], protein,
                      protein_background=cells.protein_background)


class StreamingBatches(torch.utils.data.IterableDataset):
    """Source-homogeneous training batches streamed from disk window by window.

    Parameters
    ----------
    cells
        The dataset (its ``X`` typically a :class:`~scconcerto.data.backed.BackedCSR`).
    batch_size
        Cells per batch.
    max_genes, gene_dropout, modality_dropout
        Augmentation, as in memory (see :meth:`CellMatrix.batch`).
    seed
        Seeds the chunk order, the batches and the augmentation.
    chunk_size, window_chunks
        Rows per contiguous read and chunks per window.
    num_replicas, rank
        Data-parallel world size and this process's rank.
    prefetch_batches
        Batches built ahead by the background thread (the next window is read ahead too).
    """

    def __init__(self, cells: CellMatrix, batch_size: int, max_genes: int | None = None, gene_dropout: float = 0.0,
                 seed: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE, window_chunks: int = DEFAULT_WINDOW_CHUNKS,
                 num_replicas: int = 1, rank: int = 0, prefetch_batches: int = 4, modality_dropout: float = 0.0):
        super().__init__()
        self.cells = cells
        self.batch_size = batch_size
        self.max_genes = max_genes
        self.gene_dropout = gene_dropout
        self.modality_dropout = modality_dropout
        self.seed = seed
        self.chunk_size = chunk_size
        self.window_chunks = window_chunks
        self.num_replicas = num_replicas
        self.rank = rank
        self.prefetch_batches = prefetch_batches
        self.epoch = 0
        self._steps: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self, epoch: int | None = None) -> tuple[list[list[tuple[int, int]]], int]:
        """This rank's windows for ``epoch`` and the largest batch count over ranks in it."""
        epoch = self.epoch if epoch is None else epoch
        windows = chunk_windows(self.cells.n_cells, self.chunk_size, self.window_chunks, True, self.seed, epoch,
                                self.num_replicas, self.rank)
        counts = rank_batch_counts(self.cells.n_cells, self.cells.domains, self.batch_size, self.chunk_size,
                                   self.window_chunks, self.seed, epoch, self.num_replicas)
        return windows, max(counts)

    @property
    def steps_per_epoch(self) -> int:
        """Batches yielded per epoch (fixed: the count of epoch 0, the same on every rank)."""
        if self._steps is None:
            self._steps = self.plan(0)[1]
        return self._steps

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _window_batches(self, windows: list[list[tuple[int, int]]], epoch: int) -> Iterator[CellBatch]:
        """Batches of ``windows``: full single-source batches per window, left-overs carried to the next."""
        loaded = prefetch((load_window(self.cells, w) for w in windows), depth=1)
        carry: tuple[CellMatrix, np.ndarray] | None = None
        for w_id, (window, local) in enumerate(zip(windows, loaded)):
            rows = window_rows(window)
            if carry is not None:
                local, rows = concat_cells(carry[0], local), np.concatenate([carry[1], rows])
            whole = len(windows) == 1 and len(rows) == self.cells.n_cells
            if whole:  # every cell in one window: in row order, the in-memory sampler's batches follow
                order = np.argsort(rows, kind="stable")
                local, rows = subset_cells(local, order), rows[order]
            if self.cells.positive_search is not None:  # neighbour positives among the window's cells
                local.positives = self.cells.positive_search.among(rows, local.domains)
            rng = np.random.default_rng([self.seed, epoch, w_id, 2])
            if whole:  # the batches of SourceBatchSampler: in memory and on disk train alike
                parts = source_batches(local.domains, self.batch_size, True, self.seed, epoch)
                carry = None
            elif w_id == len(windows) - 1:  # last window: near-equal batches of what is left, nothing dropped
                parts = source_batches(local.domains, self.batch_size, True, self.seed, epoch * 100_003 + w_id)
                carry = None
            else:
                parts, rest = full_source_batches(local.domains, self.batch_size, rng)
                carry = (subset_cells(local, rest), rows[rest])
            for part in parts:
                global_rows = rows[part]
                # seeded by the batch's rows, as in memory (CellBatchDataset)
                aug = np.random.default_rng([self.seed, *global_rows[:4].tolist(), len(global_rows)])
                batch = local.batch(part, self.max_genes, aug, self.gene_dropout, self.modality_dropout)
                batch.rows = torch.from_numpy(global_rows)
                yield batch
            del local
            release_freed_memory()

    def _all_batches(self) -> Iterator[CellBatch]:
        epoch = self.epoch
        windows, _ = self.plan(epoch)
        steps = self.steps_per_epoch
        produced = 0
        while produced < steps and windows:  # a rank with fewer batches goes round its windows again
            for batch in self._window_batches(windows, epoch):
                yield batch
                produced += 1
                if produced >= steps:
                    return
            epoch += 1_000_000  # a repeat pass reshuffles within the windows

    def __iter__(self) -> Iterator[CellBatch]:
        return prefetch(self._all_batches(), depth=self.prefetch_batches)


def subset_cells(cells: CellMatrix, rows: np.ndarray) -> CellMatrix:
    """The in-memory cells ``rows`` of ``cells``."""
    protein = cells.protein[rows] if cells.protein is not None else None
    return CellMatrix(cells.X[rows], cells.column_to_vocab, cells.totals[rows], cells.kind, cells.domains[rows],
                      protein, protein_background=cells.protein_background)


def concat_cells(first: CellMatrix, second: CellMatrix) -> CellMatrix:
    """Rows of ``first`` then ``second`` (both in memory, same columns)."""
    protein = None
    if first.protein is not None and second.protein is not None:
        protein = np.concatenate([first.protein, second.protein])
    return CellMatrix(sp.vstack([first.X, second.X], format="csr"), first.column_to_vocab,
                      np.concatenate([first.totals, second.totals]), first.kind,
                      np.concatenate([first.domains, second.domains]), protein,
                      protein_background=first.protein_background)
