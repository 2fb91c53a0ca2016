"""Attention pooling over a cell's expressed genes, on flat ragged batches.

The teacher computes, for each expressed gene ``i`` of a cell with value ``v_i``,
``h_i = tanh(W (e_i v_i) + b)``, logits ``u . h_i``, a softmax over the cell's
expressed genes only, and ``sum_i a_i h_i``. Because ``W`` is linear,
``W (e_i v_i) = v_i (W e_i)``: the gene table is projected once per step
(``projected = E W^T``) and each expressed gene costs a gather and a scale.

Two implementations compute the same thing:

``fused`` (CPU, float32; the default there)
    numba kernels that walk each cell once and never materialize ``(nnz, d)``
    intermediates (:mod:`scconcerto.nn.fused_attention`).
``torch``
    plain tensor operations on the flat layout (any device and dtype; the path
    for GPUs, where it runs under bf16 autocast too). ``compiled`` is the same
    function through ``torch.compile``.

``auto`` picks ``fused`` for CPU float32 tensors and ``torch`` otherwise. Choose
with :func:`set_attention_backend`, the :func:`attention_backend` context
manager, or the ``SCCONCERTO_ATTENTION`` environment variable.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F

from .._ragged import Ragged

AttentionBackend = Literal["auto", "fused", "torch", "compiled"]
_BACKENDS = ("auto", "fused", "torch", "compiled")
_backend: str = os.environ.get("SCCONCERTO_ATTENTION", "auto")
_compiled: Callable | None = None


@cache
def fused_available() -> bool:
    """Whether the fused CPU kernels can run (numba is installed; it is imported only when first used)."""
    return importlib.util.find_spec("numba") is not None


def set_attention_backend(name: AttentionBackend) -> str:
    """Select the attention implementation for this process; returns the previous choice."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {_BACKENDS}")
    if name == "fused" and not fused_available():
        raise ValueError("the 'fused' attention backend needs numba, which is not installed")
    previous, _backend = _backend, name
    return previous


def get_attention_backend() -> str:
    """The current choice (``auto``, ``fused``, ``torch`` or ``compiled``)."""
    return _backend


@contextmanager
def attention_backend(name: AttentionBackend) -> Iterator[None]:
    """Use attention implementation ``name`` inside a ``with`` block."""
    previous = set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)  # type: ignore[arg-type]


def segment_softmax(logits: torch.Tensor, segments: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Softmax of ``logits`` within each segment (numerically stable: max-subtracted).

    Segments with no entries simply produce nothing; no padding is involved.
    Half-precision input is computed in float32 (bf16 autocast runs
    ``exp`` in float32, and a bf16 sum over hundreds of genes loses digits).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    neg_inf = torch.full((n_segments,), float("-inf"), dtype=logits.dtype, device=logits.device)
    seg_max = neg_inf.scatter_reduce(0, segments, logits.detach(), reduce="amax", include_self=True)
    shifted = torch.exp(logits - seg_max[segments])
    denom = torch.zeros(n_segments, dtype=logits.dtype, device=logits.device).index_add(0, segments, shifted)
    return shifted / denom[segments]


def attention_pool_torch(projected: torch.Tensor, bias: torch.Tensor, context: torch.Tensor, indices: torch.Tensor,
                         values: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation in plain torch on the flat layout (any device or dtype).

    ``F.embedding`` gathers the projected rows: its backward is a sorted
    segment-sum, cheaper than the ``index_put_`` behind fancy indexing.
    """
    n_rows = offsets.shape[0] - 1
    segments = torch.repeat_interleave(torch.arange(n_rows, device=offsets.device), offsets[1:] - offsets[:-1],
                                       output_size=indices.shape[0])
    gathered = F.embedding(indices, projected)
    h = torch.tanh(torch.addcmul(bias.to(gathered.dtype), gathered, values.to(gathered.dtype).unsqueeze(1)))
    weights = segment_softmax(h @ context.to(h.dtype), segments, n_rows)
    weighted = h * weights.unsqueeze(1)  # float32 (the weights are): the sums over genes accumulate in float32
    hidden = torch.zeros(n_rows, h.shape[1], dtype=weighted.dtype, device=h.device).index_add(0, segments, weighted)
    return hidden, weights


def _compiled_pool() -> Callable:
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(attention_pool_torch, dynamic=True)
    return _compiled


def _use_fused(projected: torch.Tensor, values: torch.Tensor) -> bool:
    if _backend == "fused":
        return True
    return (_backend == "auto" and fused_available() and projected.device.type == "cpu"
            and projected.dtype == torch.float32 and values.dtype == torch.float32)


def attention_pool(projected: torch.Tensor, bias: torch.Tensor, context: torch.Tensor,
                   cells: Ragged) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool each cell's expressed genes by attention.

    Parameters
    ----------
    projected
        ``(n_genes, d)`` projected gene table ``W e_g``.
    bias
        ``(d,)`` bias ``b`` of the projection.
    context
        ``(d,)`` context vector ``u`` scoring each gene.
    cells
        Ragged batch of ``n_cells`` cells.

    Returns
    -------
    hidden
        ``(n_cells, d)`` attention-weighted sums; zeros for cells with no gene.
    weights
        ``(nnz,)`` attention weights, summing to one within each cell.
    """
    args = (projected, bias, context, cells.indices, cells.values, cells.offsets)
    if _use_fused(projected, cells.values):
        from . import fused_attention

        f32 = [t.float() if t.is_floating_point() else t for t in args]
        return fused_attention.fused_attention_pool(*f32)
    if _backend == "compiled":
        return _compiled_pool()(*args)
    return attention_pool_torch(*args)
