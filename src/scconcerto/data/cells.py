"""A dataset as the model sees it: CSR rows aligned to the vocabulary, normalized per batch of cells."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .._ragged import CellBatch, Ragged
from .backed import BackedCSR
from .preprocess import InputKind, normalize_values
from .protein import above_background

if TYPE_CHECKING:
    from .positives import PositiveSearch
    from .value_scale import ValueMap


def subsample_rows(indices: np.ndarray, values: np.ndarray, offsets: np.ndarray, max_len: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep at most ``max_len`` randomly chosen entries of every row (vectorized, order kept)."""
    lengths = np.diff(offsets)
    if lengths.size == 0 or lengths.max() <= max_len:
        return indices, values, offsets
    row = np.repeat(np.arange(lengths.size), lengths)
    order = np.lexsort((rng.random(row.size), row))
    rank = np.arange(row.size) - offsets[row[order]]
    kept = np.sort(order[rank < max_len])
    new_offsets = np.zeros_like(offsets)
    np.cumsum(np.minimum(lengths, max_len), out=new_offsets[1:])
    return indices[kept], values[kept], new_offsets


def drop_entries(indices: np.ndarray, values: np.ndarray, offsets: np.ndarray, rate: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop each stored entry with probability ``rate`` (gene-level augmentation, vectorized)."""
    if rate <= 0 or indices.size == 0:
        return indices, values, offsets
    keep = rng.random(indices.size) >= rate
    row = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    new_offsets = np.zeros_like(offsets)
    np.cumsum(np.bincount(row[keep], minlength=offsets.size - 1), out=new_offsets[1:])
    return indices[keep], values[keep], new_offsets


def _dense_to_ragged_arrays(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(block)
    offsets = np.zeros(block.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=block.shape[0]), out=offsets[1:])
    return cols, block[rows, cols], offsets


@dataclass
class CellMatrix:
    """Cells ready to be batched.

    Attributes
    ----------
    X
        Cells x dataset-genes CSR matrix, in memory or on disk
        (:class:`~scconcerto.data.backed.BackedCSR`, read by row blocks).
    column_to_vocab
        Vocabulary position of each dataset column, ``-1`` for dropped columns;
        ``None`` when the columns already are the vocabulary.
    totals
        Per-cell totals over all dataset genes (for ``counts``).
    kind
        What ``X`` holds (see :func:`~scconcerto.data.preprocess.detect_input_kind`).
    domains
        Source code of each cell (int64).
    protein
        Normalized protein values, cells x model proteins (float32), or ``None``.
    positives
        ``(n_cells, k)`` candidate positives per cell for training (see
        :mod:`scconcerto.data.positives`): the student view of a cell is drawn
        from one of them. ``None``: both views come from the cell itself (the paper).
    protein_background
        ``(n_proteins,)`` background level of each protein (:mod:`scconcerto.data.protein`): the
        network's views hold a protein only where it is above it. ``None``: every non-zero value.
    positive_search
        How positives are found among a set of cells
        (:class:`~scconcerto.data.positives.PositiveSearch`): cells streamed from disk
        search them in each window as it is read, instead of holding :attr:`positives`.
    balance_weights
        ``(n_cells,)`` weight of each cell in the source-specific batch-normalization
        statistics of training (:mod:`scconcerto.data.composition`); ``None``: equal weights.
    training_labels
        ``(n_cells,)`` label group of each cell for the supervised term of training
        (:attr:`~scconcerto.train.TrainConfig.label_weight`), ``-1`` where the cell's label is
        missing or held out; ``None``: no supervised term.
    value_map
        Map of the normalized non-zero values onto the reference's scale (:mod:`scconcerto.data.value_scale`),
        for data whose values are of another kind than the reference's; ``None``: values as normalized.
    """

    X: sp.csr_matrix | BackedCSR
    column_to_vocab: np.ndarray | None
    totals: np.ndarray
    kind: InputKind
    domains: np.ndarray
    protein: np.ndarray | None = None
    positives: np.ndarray | None = None
    protein_background: np.ndarray | None = None
    positive_search: PositiveSearch | None = None
    balance_weights: np.ndarray | None = None
    training_labels: np.ndarray | None = None
    value_map: ValueMap | None = None

    @property
    def n_cells(self) -> int:
        return int(self.X.shape[0])

    @property
    def on_disk(self) -> bool:
        """Whether the expression matrix is read from disk block by block."""
        return isinstance(self.X, BackedCSR)

    def rna_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Aligned, normalized index-value arrays of ``rows`` (indices, values, offsets)."""
        block = self.X[rows]
        if not sp.isspmatrix_csr(block) and not isinstance(block, sp.csr_array):
            block = sp.csr_matrix(block)
        indptr = np.asarray(block.indptr, dtype=np.int64)
        lengths = np.diff(indptr)
        row_of = np.repeat(np.arange(len(rows)), lengths)
        values = normalize_values(np.asarray(block.data), row_of, self.totals[rows], self.kind)
        if self.value_map is not None:
            values = self.value_map(values)
        indices = np.asarray(block.indices, dtype=np.int64)
        if self.column_to_vocab is not None:
            indices = self.column_to_vocab[indices]
        keep = (indices >= 0) & (values != 0)
        if not keep.all():
            indices, values, row_of = indices[keep], values[keep], row_of[keep]
            indptr = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(np.bincount(row_of, minlength=len(rows)), out=indptr[1:])
        return indices, values, indptr

    def protein_view(self, rows: np.ndarray) -> np.ndarray:
        """The protein values of ``rows`` as the network sees them (zero at or below background)."""
        return above_background(self.protein[rows], self.protein_background)

    def batch(self, rows: np.ndarray, max_genes: int | None = None, rng: np.random.Generator | None = None,
              gene_dropout: float = 0.0, modality_dropout: float = 0.0) -> CellBatch:
        """Build the mini-batch of ``rows``.

        With ``rng`` (training), each view independently loses a fraction
        ``gene_dropout`` of the expressed genes, the teacher view keeps at
        most ``max_genes`` genes per cell, and, when :attr:`positives` is set,
        the student view is a randomly drawn positive of each cell instead of
        the cell itself; with probability ``modality_dropout`` the teacher view
        of the whole batch loses its proteins (so that the RNA-only teacher learns
        to land where RNA + protein cells do: RNA-only queries, protein imputation).
        Without ``rng`` both views are the full cell.
        """
        rows = np.asarray(rows, dtype=np.int64)
        student: dict[str, Ragged] = {}
        teacher: dict[str, Ragged] = {}
        ind, val, off = self.rna_rows(rows)
        student_rows = rows
        if rng is None:
            student["rna"] = teacher["rna"] = Ragged.from_numpy(ind, val, off)
        else:
            if self.positives is not None:
                student_rows = self.positives[rows, rng.integers(0, self.positives.shape[1], len(rows))]
                s_ind, s_val, s_off = self.rna_rows(student_rows)
            else:
                s_ind, s_val, s_off = ind, val, off
            student["rna"] = Ragged.from_numpy(*drop_entries(s_ind, s_val, s_off, gene_dropout, rng))
            t_ind, t_val, t_off = drop_entries(ind, val, off, gene_dropout, rng)
            if max_genes is not None:
                t_ind, t_val, t_off = subsample_rows(t_ind, t_val, t_off, max_genes, rng)
            teacher["rna"] = Ragged.from_numpy(t_ind, t_val, t_off)
        if self.protein is not None:
            teacher["protein"] = Ragged.from_numpy(*_dense_to_ragged_arrays(self.protein_view(rows)))
            student["protein"] = (teacher["protein"] if student_rows is rows
                                  else Ragged.from_numpy(*_dense_to_ragged_arrays(self.protein_view(student_rows))))
            if rng is not None and modality_dropout > 0 and rng.random() < modality_dropout:
                del teacher["protein"]
        import torch

        return CellBatch(student, teacher, torch.from_numpy(self.domains[rows].astype(np.int64)),
                         torch.from_numpy(rows))


def restrict_to_genes(cells: CellMatrix, keep: np.ndarray) -> CellMatrix:
    """The same cells reading only the vocabulary genes where ``keep`` (a boolean mask over the vocabulary) is
    true: the others read as not detected. Nothing is copied but the column map."""
    keep = np.asarray(keep, dtype=bool)
    col = np.arange(cells.X.shape[1]) if cells.column_to_vocab is None else np.asarray(cells.column_to_vocab)
    inside = col >= 0
    if (col[inside] >= keep.size).any():
        raise ValueError(f"the cells use vocabulary genes beyond the mask's {keep.size}")
    kept = inside.copy()
    kept[inside] = keep[col[inside]]
    return replace(cells, column_to_vocab=np.where(kept, col, -1))
