"""Attention pooling over a cell's expressed genes, on flat ragged batches.

The teacher computes, for each expressed gene ``i`` of a cell with value ``v_i``,
``h_i = tanh(W (e_i v_i) + b)``, logits ``u . h_i``, a softmax over the cell's
expressed genes only, and ``sum_i a_i h_i``. Because ``W`` is linear,
``W (e_i v_i) = v_i (W e_i)``: the gene table is projected once per step
(``projected = E W^T``) and each expressed gene costs a gather and a scale.
"""

from __future__ import annotations

import torch

from .._ragged import Ragged


def segment_softmax(logits: torch.Tensor, segments: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Softmax of ``logits`` within each segment (numerically stable: max-subtracted).

    Segments with no entries simply produce nothing; no padding is involved.
    """
    neg_inf = torch.full((n_segments,), float("-inf"), dtype=logits.dtype, device=logits.device)
    seg_max = neg_inf.scatter_reduce(0, segments, logits.detach(), reduce="amax", include_self=True)
    shifted = torch.exp(logits - seg_max[segments])
    denom = torch.zeros(n_segments, dtype=logits.dtype, device=logits.device).index_add(0, segments, shifted)
    return shifted / denom[segments]


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
    segments = cells.segment_ids()
    h = torch.tanh(torch.addcmul(bias, projected[cells.indices], cells.values.unsqueeze(1)))
    weights = segment_softmax(h @ context, segments, cells.n_rows)
    hidden = torch.zeros(cells.n_rows, h.shape[1], dtype=h.dtype, device=h.device)
    hidden = hidden.index_add(0, segments, h * weights.unsqueeze(1))
    return hidden, weights
