"""Ragged (flat, offset-indexed) mini-batches: a cell is the list of its expressed features.

This is the index-value format of the paper: exactly the ``indices``/``data``
arrays of a CSR row block, so a batch never holds a zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Ragged:
    """Feature ids and values of ``n_rows`` cells, concatenated.

    Attributes
    ----------
    indices
        ``(nnz,)`` int64 feature ids (vocabulary positions).
    values
        ``(nnz,)`` float32 normalized values.
    offsets
        ``(n_rows + 1,)`` int64; row ``r`` is ``offsets[r]:offsets[r+1]``.
    """

    indices: torch.Tensor
    values: torch.Tensor
    offsets: torch.Tensor

    @property
    def n_rows(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def segment_ids(self) -> torch.Tensor:
        """Row number of each stored value."""
        return torch.repeat_interleave(torch.arange(self.n_rows, device=self.offsets.device), self.lengths)

    def to(self, device: torch.device | str) -> "Ragged":
        return Ragged(self.indices.to(device, non_blocking=True), self.values.to(device, non_blocking=True),
                      self.offsets.to(device, non_blocking=True))

    def pin_memory(self) -> "Ragged":
        """A copy in page-locked memory (DataLoader ``pin_memory``: asynchronous copies to the GPU)."""
        return Ragged(self.indices.pin_memory(), self.values.pin_memory(), self.offsets.pin_memory())

    @classmethod
    def from_numpy(cls, indices: np.ndarray, values: np.ndarray, offsets: np.ndarray) -> "Ragged":
        return cls(torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64)),
                   torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)),
                   torch.from_numpy(np.ascontiguousarray(offsets, dtype=np.int64)))

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> "Ragged":
        """Non-zeros of a dense ``(rows, features)`` tensor (for tests and small protein panels)."""
        rows, cols = torch.nonzero(dense, as_tuple=True)
        counts = torch.bincount(rows, minlength=dense.shape[0])
        offsets = torch.zeros(dense.shape[0] + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)
        return cls(cols.to(torch.int64), dense[rows, cols].to(torch.float32), offsets)


@dataclass
class CellBatch:
    """One mini-batch: per modality, the full (student) and possibly subsampled (teacher) view.

    ``domains`` holds each cell's source code (for domain-specific BN);
    ``rows`` the cells' row numbers in their dataset; ``weights`` (optional)
    each cell's weight in the batch-normalization statistics (balanced sources).
    """

    student: dict[str, Ragged]
    teacher: dict[str, Ragged]
    domains: torch.Tensor
    rows: torch.Tensor
    weights: torch.Tensor | None = None

    @property
    def n_cells(self) -> int:
        return int(self.domains.shape[0])

    def to(self, device: torch.device | str) -> "CellBatch":
        return CellBatch({k: v.to(device) for k, v in self.student.items()},
                         {k: v.to(device) for k, v in self.teacher.items()},
                         self.domains.to(device, non_blocking=True), self.rows.to(device, non_blocking=True),
                         None if self.weights is None else self.weights.to(device, non_blocking=True))

    def pin_memory(self) -> "CellBatch":
        """A copy in page-locked memory (called by the DataLoader's pinning thread)."""
        pinned = {id(v): v.pin_memory() for v in (*self.student.values(), *self.teacher.values())}
        return CellBatch({k: pinned[id(v)] for k, v in self.student.items()},
                         {k: pinned[id(v)] for k, v in self.teacher.items()},
                         self.domains.pin_memory(), self.rows.pin_memory(),
                         None if self.weights is None else self.weights.pin_memory())
