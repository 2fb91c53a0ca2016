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
