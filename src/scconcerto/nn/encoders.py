"""Teacher and student encoders of one modality, and the shared output tail."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._ragged import Ragged
from .attention import attention_pool
from .dsbn import DomainSpecificBatchNorm1d


class AttentionEncoder(nn.Module):
    """Teacher branch: attention over the embeddings of a cell's expressed features.

    Parameters
    ----------
    n_features
        Vocabulary size (genes or proteins).
    dim
        Embedding width ``d``.
    """

    def __init__(self, n_features: int, dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(n_features, dim) / math.sqrt(dim))
        self.projection = nn.Linear(dim, dim)
        self.context = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def projected_table(self) -> torch.Tensor:
        """``E W^T``: every feature's projected embedding.

        Without autograd (inference) the table is cached until the weights change.
        """
        if torch.is_grad_enabled():
            return self.embedding @ self.projection.weight.T
        w = self.projection.weight
        key = (self.embedding._version, w._version, self.embedding.data_ptr(), w.data_ptr(), w.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.embedding @ w.T)
        return self._cache[1]

    def forward(self, cells: Ragged) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(hidden (n_cells, d), attention weights (nnz,))``."""
        return attention_pool(self.projected_table(), self.projection.bias, self.context, cells)


class SparseLinearEncoder(nn.Module):
    """Student branch's first dense layer applied to a sparse cell vector (sparse x dense, never densified)."""

    def __init__(self, n_features: int, dim: int):
        super().__init__()
        self.weight = nn.EmbeddingBag(n_features, dim, mode="sum")
        bound = 1 / math.sqrt(max(n_features, 1))
        nn.init.uniform_(self.weight.weight, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, cells: Ragged) -> torch.Tensor:
        return self.weight(cells.indices, cells.offsets[:-1], per_sample_weights=cells.values) + self.bias


class ProjectionTail(nn.Module):
    """``ReLU(Dense(Dropout(DSBN(hidden))))``: the part shared by all modalities of one network."""

    def __init__(self, dim: int, out_dim: int, n_domains: int, dropout: float):
        super().__init__()
        self.norm = DomainSpecificBatchNorm1d(dim, n_domains)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(dim, out_dim)

    def forward(self, hidden: torch.Tensor, domains: torch.Tensor, weights: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``weights``: per-cell weights of the batch statistics (training, AdaBN), see the DSBN."""
        return torch.relu(self.dense(self.dropout(self.norm(hidden, domains, weights))))
