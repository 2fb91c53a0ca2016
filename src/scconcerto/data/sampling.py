"""Source-homogeneous mini-batches: every batch holds cells of one source (``batch_key`` category)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.utils.data


def source_batches(domains: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0,
                   epoch: int = 0) -> list[np.ndarray]:
    """Split cells into batches that each hold one source.

    Each source's cells are split into ``ceil(n / batch_size)`` near-equal
    batches, so no cell is dropped and no batch is a tiny remainder (batch
    normalization needs at least two cells). With ``shuffle`` the cells within
    a source and the order of batches across sources are permuted by a
    generator seeded with ``(seed, epoch)``; otherwise order is by source and row.
    """
    rng = np.random.default_rng([seed, epoch])
    batches: list[np.ndarray] = []
    order = np.argsort(domains, kind="stable")
    bounds = np.flatnonzero(np.diff(domains[order])) + 1
    for cells in np.split(order, bounds):
        if cells.size == 0:
            continue
        if shuffle:
            cells = rng.permutation(cells)
        n_parts = -(-cells.size // batch_size)
        batches.extend(np.array_split(cells, n_parts))
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class SourceBatchSampler(torch.utils.data.Sampler[list[int]]):
    """A batch sampler yielding source-homogeneous batches, reshuffled per epoch (``set_epoch``).

    Under ``torch.distributed`` pass ``num_replicas``/``rank``: each rank takes
    every ``num_replicas``-th batch of the same seeded order (padded by
    repetition so that all ranks run the same number of steps).
    """

    def __init__(self, domains: np.ndarray, batch_size: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        self.domains = np.asarray(domains)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all(self) -> list[np.ndarray]:
        return source_batches(self.domains, self.batch_size, self.shuffle, self.seed, self.epoch)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all()
        if self.num_replicas > 1:
            per_rank = -(-len(batches) // self.num_replicas)
            batches = (batches * 2)[: per_rank * self.num_replicas] if batches else batches
            batches = batches[self.rank::self.num_replicas]
        for b in batches:
            yield b.tolist()

    def __len__(self) -> int:
        n = len(self._all())
        return -(-n // self.num_replicas)


def chunk_windows(n_cells: int, chunk_size: int, window_chunks: int, shuffle: bool, seed: int = 0,
                  epoch: int = 0, num_replicas: int = 1, rank: int = 0) -> list[list[tuple[int, int]]]:
    """Group contiguous row chunks into windows: the unit read from disk at once when streaming.

    Rows are cut into chunks of ``chunk_size``; with ``shuffle`` the chunk order
    is permuted (seeded by ``(seed, epoch)``). Under data parallelism rank
    ``rank`` takes every ``num_replicas``-th chunk of that order, so ranks read
    disjoint parts of the file and differ by at most one chunk. The rank's chunks
    are grouped ``window_chunks`` at a time; a window is a list of
    ``(start, stop)`` row ranges.
    """
    if chunk_size < 1 or window_chunks < 1:
        raise ValueError(f"chunk_size and window_chunks must be positive, got {chunk_size}, {window_chunks}")
    starts = np.arange(0, n_cells, chunk_size)
    order = np.random.default_rng([seed, epoch, 1]).permutation(starts.size) if shuffle else np.arange(starts.size)
    mine = order[rank::num_replicas]
    if mine.size == 0 and order.size:  # more ranks than chunks: reuse one
        mine = order[rank % order.size:rank % order.size + 1]
    ranges = [(int(starts[i]), int(min(starts[i] + chunk_size, n_cells))) for i in mine]
    return [ranges[i:i + window_chunks] for i in range(0, len(ranges), window_chunks)]


def window_rows(window: list[tuple[int, int]]) -> np.ndarray:
    """The row numbers of a window, in the order its chunks are read."""
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in window]) if window else np.zeros(0, np.int64)


def count_source_batches(domains: np.ndarray, batch_size: int) -> int:
    """How many batches :func:`source_batches` makes of ``domains`` (without building them)."""
    counts = np.bincount(np.asarray(domains, dtype=np.int64)) if len(domains) else np.zeros(0, np.int64)
    return int(np.sum(-(-counts[counts > 0] // batch_size)))


def rank_batch_counts(n_cells: int, domains: np.ndarray, batch_size: int, chunk_size: int, window_chunks: int,
                      seed: int, epoch: int, num_replicas: int) -> list[int]:
    """Batches each rank makes in ``epoch`` when streaming (left-overs carried between windows)."""
    counts = []
    for r in range(num_replicas):
        windows = chunk_windows(n_cells, chunk_size, window_chunks, True, seed, epoch, num_replicas, r)
        rows = np.concatenate([window_rows(w) for w in windows]) if windows else np.zeros(0, np.int64)
        counts.append(count_source_batches(domains[rows], batch_size))
    return counts


def full_source_batches(domains: np.ndarray, batch_size: int, rng: np.random.Generator
                        ) -> tuple[list[np.ndarray], np.ndarray]:
    """Shuffled batches of exactly ``batch_size`` cells of one source, and the cells left over.

    Used on a streamed window: the left-over cells (fewer than ``batch_size``
    per source) are carried into the next window, so over an epoch every source
    yields ``ceil(n / batch_size)`` batches whatever the windows are.
    """
    domains = np.asarray(domains)
    batches: list[np.ndarray] = []
    rest: list[np.ndarray] = []
    for d in np.unique(domains):
        cells = rng.permutation(np.flatnonzero(domains == d))
        n_full = cells.size // batch_size
        batches.extend(cells[: n_full * batch_size].reshape(n_full, batch_size))
        rest.append(cells[n_full * batch_size:])
    order = rng.permutation(len(batches))
    left = np.sort(np.concatenate(rest)) if rest else np.zeros(0, dtype=np.int64)
    return [batches[i] for i in order], left.astype(np.int64)
