"""Detect what kind of values a matrix holds and normalize CSR values without densifying."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from .._errors import InputError

InputKind = Literal["counts", "normalized", "log_normalized"]

TARGET_SUM = 1e4
_SAMPLE_NNZ = 2_000_000
_LOG_MAX = 30.0  # log1p(CP10K) never exceeds ~10; anything above this is not log-scale


def check_values(values: np.ndarray, where: str) -> None:
    """Raise a clear error for NaN/inf or negative stored values."""
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        n_bad = int((~np.isfinite(values)).sum())
        raise InputError(
            f"{where} holds {n_bad} NaN or infinite values. scConcerto needs finite, non-negative "
            "expression values: replace them (e.g. `X.data = np.nan_to_num(X.data)`) or pass the raw "
            "counts layer with `layer=`."
        )
    if values.min() < 0:
        raise InputError(
            f"{where} holds negative values (min {values.min():.3g}): it looks scaled or centred "
            "(e.g. after `sc.pp.scale`). Pass raw counts or log-normalized values instead "
            "(`layer='counts'`, or `adata.raw.to_adata()`)."
        )


def detect_input_kind(stored_values: np.ndarray, where: str = "X") -> InputKind:
    """Tell raw counts from normalized or log-normalized values.

    Integer-valued data are counts; non-integer data with a maximum below 30
    are taken as already log-normalized and used as they are; larger
    non-integer values are normalized but not logged (``log1p`` is applied).
    """
    check_values(stored_values, where)
    sample = stored_values[:_SAMPLE_NNZ]
    if sample.size == 0:
        return "counts"
    if np.all(sample == np.round(sample)):
        return "counts"
    if float(sample.max()) <= _LOG_MAX:
        return "log_normalized"
    return "normalized"


def cell_totals(matrix: sp.csr_matrix) -> np.ndarray:
    """Per-cell sum of stored values (all genes, before any gene selection)."""
    return np.asarray(matrix.sum(axis=1)).ravel().astype(np.float64)


def normalize_values(values: np.ndarray, row_of_value: np.ndarray, totals: np.ndarray,
                     kind: InputKind, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Normalize CSR values to ``log1p`` scale.

    Parameters
    ----------
    values
        Stored non-zero values of the selected rows.
    row_of_value
        For each value, the position of its row in ``totals``.
    totals
        Per-row totals over all genes (used for ``counts`` only).
    kind
        What the values are (see :func:`detect_input_kind`).
    """
    values = values.astype(np.float32, copy=False)
    if kind == "counts":
        scale = (target_sum / np.maximum(totals, 1e-12)).astype(np.float32)
        return np.log1p(values * scale[row_of_value])
    if kind == "normalized":
        return np.log1p(values)
    return values


DENSE_BLOCK_ROWS = 4096


def csr_rows(matrix: sp.spmatrix) -> sp.csr_matrix:
    """Return ``matrix`` as CSR with float32 values, sorted indices, repeated entries summed and no explicit
    zeros (no densifying; ``matrix`` itself is never changed)."""
    if not sp.issparse(matrix):
        arr = np.asarray(matrix)
        if arr.ndim != 2 or arr.dtype.kind not in "biuf":
            raise InputError(f"The expression matrix holds {arr.dtype} values of shape {arr.shape}; it must be a "
                             "2-D matrix of numbers.")
        blocks = [sp.csr_matrix(arr[i:i + DENSE_BLOCK_ROWS].astype(np.float32))  # float16 too, block by block
                  for i in range(0, max(arr.shape[0], 1), DENSE_BLOCK_ROWS)]
        matrix = blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")
    m = matrix.tocsr()
    if m.dtype.kind not in "biuf":
        raise InputError(f"The expression matrix holds {m.dtype} values; it must hold real numbers.")
    if m.dtype != np.float32:
        m = m.astype(np.float32)
    if not m.has_canonical_format:  # unsorted indices or repeated (row, gene) entries: sum them, on a copy
        m = m.copy()
        m.sum_duplicates()
    if m.nnz and np.any(m.data == 0):
        m = m.copy()
        m.eliminate_zeros()
    return m
