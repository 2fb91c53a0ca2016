"""Teacher attention weights per cell and gene (and protein), taken from the embedding's own code path.

The teacher pools each modality's expressed features by attention
(:func:`scconcerto.nn.attention.attention_pool`) *before* the domain-specific
batch normalization of its tail. The weights therefore do not depend on the
source of a cell nor on BN statistics, so cells of unseen sources need no AdaBN
here: the weights are those the embedding of :meth:`Concerto.embed` uses.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._errors import InputError
from ..data.vocabulary import DEFAULT_MIN_OVERLAP
from ..tools.attention import AttentionWeights

__all__ = ["AttentionMixin", "AttentionWeights"]

MODALITIES = ("rna", "protein")


def _vocab_to_column(column_to_vocab: np.ndarray, n_vocab: int) -> np.ndarray:
    """Invert a gene alignment: the dataset column of each vocabulary gene (``-1`` if absent)."""
    out = np.full(n_vocab, -1, dtype=np.int64)
    present = np.flatnonzero(column_to_vocab >= 0)
    out[column_to_vocab[present]] = present
    return out


def _stack_rows(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], shape: tuple[int, int]) -> sp.csr_matrix:
    """One CSR matrix from consecutive row blocks given as (column indices, values, offsets)."""
    if not parts:
        return sp.csr_matrix(shape, dtype=np.float32)
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    lengths = np.concatenate([np.diff(off) for _, _, off in parts])
    np.cumsum(lengths, out=indptr[1:])
    indices = np.concatenate([idx for idx, _, _ in parts])
    values = np.concatenate([val for _, val, _ in parts]).astype(np.float32, copy=False)
    m = sp.csr_matrix((values, indices, indptr), shape=shape)
    m.sort_indices()  # vocabulary order -> the data's column order, in place
    return m


class AttentionMixin:
    """Teacher attention weights per cell and gene. Mixed into :class:`~scconcerto.model.Concerto`."""

    @torch.no_grad()
    def attention(self, adata: ad.AnnData, batch_size: int = 1024, device: str = "auto",
                  min_overlap: float = DEFAULT_MIN_OVERLAP, use_protein: bool = True) -> AttentionWeights:
        """The teacher's attention weights of every cell over its expressed genes (and proteins).

        The weights come from the same call the embedding makes
        (:meth:`~scconcerto.nn.ConcertoNetwork.teacher_hidden` on the full,
        un-subsampled teacher view, eval mode), in chunks of ``batch_size``
        cells; only the sparse result is kept (about 8 bytes per expressed gene).

        Parameters
        ----------
        adata
            Cells to explain; genes are aligned to the model's vocabulary by name.
        batch_size
            Cells per chunk.
        device
            ``"auto"``, ``"cpu"`` or ``"cuda"``.
        min_overlap
            Smallest fraction of the model's genes the data must have.
        use_protein
            Also return protein attention when the model and the data have proteins.

        Returns
        -------
        AttentionWeights
            ``.rna``: cells x ``adata.var_names`` CSR (rows sum to one over the
            expressed genes the model knows; zero elsewhere); ``.protein``:
            cells x model proteins CSR (rows sum to one over the proteins above
            background), or ``None``. Attention does not depend
            on the cells' sources (it is computed before batch normalization),
            so no source adaptation is needed.

        Examples
        --------
        >>> att = model.attention(adata)  # doctest: +SKIP
        >>> att.rna.sum(axis=1)  # ones (zeros for cells with no known gene)  # doctest: +SKIP
        """
        from ..train.runner import resolve_device

        if batch_size < 1:
            raise InputError(f"batch_size must be a positive number of cells, got {batch_size}.")
        prepared = self._prepare(adata, None, min_overlap, what="the data", use_protein=use_protein)
        self.last_alignment = prepared.alignment
        cells = prepared.cells
        to_column = _vocab_to_column(prepared.alignment.column_to_vocab, len(self.setup.genes))
        shapes = {"rna": (cells.n_cells, adata.n_vars)}
        if cells.protein is not None:
            shapes["protein"] = (cells.n_cells, len(self.setup.proteins))
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {m: [] for m in shapes}
        index_dtype = np.int32 if max(adata.n_vars, len(self.setup.proteins)) < 2**31 else np.int64
        dev = resolve_device(device)
        network = self.network
        was_training = network.training
        network.to(dev).eval()
        try:
            # consecutive chunks of cells: attention comes before the (source-specific) BN, so chunks
            # need not be source-homogeneous, and consecutive rows give the CSR directly
            for start in range(0, cells.n_cells, batch_size):
                views = cells.batch(np.arange(start, min(start + batch_size, cells.n_cells))).teacher
                _, weights = network.teacher_hidden({m: v.to(dev) for m, v in views.items()})
                for m, w in weights.items():
                    idx = views[m].indices.numpy()
                    columns = (to_column[idx] if m == "rna" else idx).astype(index_dtype)
                    parts[m].append((columns, w.float().cpu().numpy(), views[m].offsets.numpy()))
        finally:
            network.cpu().train(was_training)
        out = {m: _stack_rows(parts[m], shapes[m]) for m in shapes}
        return AttentionWeights(rna=out["rna"], var_names=pd.Index(adata.var_names.astype(str), dtype=object),
                                protein=out.get("protein"),
                                protein_names=list(self.setup.proteins) if "protein" in out else [])
