"""The asymmetric teacher-student network of Concerto, for one or more modalities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._ragged import CellBatch, Ragged
from .encoders import AttentionEncoder, ProjectionTail, SparseLinearEncoder


class ConcertoNetwork(nn.Module):
    """Teacher (attention) and student (dense) networks whose outputs form positive pairs.

    Each modality has its own teacher and student branch; per-modality hidden
    vectors are summed before each network's tail (DSBN, dropout, dense, ReLU).

    Parameters
    ----------
    n_features
        Vocabulary size per modality, e.g. ``{"rna": 2000, "protein": 13}``.
    n_domains
        Number of sources (for domain-specific BN).
    dim
        Hidden width ``d``.
    out_dim
        Embedding width.
    dropout
        Dropout rate before the output layer (the augmentation that makes the two views).
    """

    def __init__(self, n_features: dict[str, int], n_domains: int, dim: int = 128, out_dim: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        self.modalities = list(n_features)
        self.teacher_encoders = nn.ModuleDict({m: AttentionEncoder(n, dim) for m, n in n_features.items()})
        self.student_encoders = nn.ModuleDict({m: SparseLinearEncoder(n, dim) for m, n in n_features.items()})
        self.teacher_tail = ProjectionTail(dim, out_dim, n_domains, dropout)
        self.student_tail = ProjectionTail(dim, out_dim, n_domains, dropout)

    def teacher_hidden(self, views: dict[str, Ragged]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Summed attention-pooled hidden vectors and each modality's attention weights."""
        hidden = None
        weights: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            if m not in views:  # a modality the cells lack (e.g. RNA-only query) adds nothing
                continue
            h, weights[m] = self.teacher_encoders[m](views[m])
            hidden = h if hidden is None else hidden + h
        if hidden is None:
            raise ValueError(f"the batch has none of the network's modalities {self.modalities}")
        return hidden, weights

    def teacher(self, batch: CellBatch) -> torch.Tensor:
        hidden, _ = self.teacher_hidden(batch.teacher)
        return self.teacher_tail(hidden, batch.domains)

    def student(self, batch: CellBatch) -> torch.Tensor:
        hidden = sum(self.student_encoders[m](batch.student[m]) for m in self.modalities if m in batch.student)
        return self.student_tail(hidden, batch.domains)

    def forward(self, batch: CellBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.teacher(batch), self.student(batch)

    def embed(self, batch: CellBatch) -> torch.Tensor:
        """L2-normalized teacher output (call in eval mode for the deterministic embedding)."""
        hidden, _ = self.teacher_hidden(batch.teacher)
        return self.embed_hidden(hidden, batch.domains)

    def embed_hidden(self, hidden: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        """:meth:`embed` from the teacher's pooled hidden vectors (:meth:`teacher_hidden`) of ``domains``."""
        return F.normalize(self.teacher_tail(hidden, domains), dim=1, eps=1e-12)

    def domain_norms(self) -> list[nn.Module]:
        return [self.teacher_tail.norm, self.student_tail.norm]
