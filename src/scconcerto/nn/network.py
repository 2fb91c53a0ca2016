"""The asymmetric teacher-student network of Concerto, for one or more modalities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._ragged import CellBatch, Ragged
from .encoders import AttentionEncoder, ProjectionTail, SparseLinearEncoder


#: Student encoders by name.
STUDENTS = {"linear": SparseLinearEncoder, "attention": AttentionEncoder}


def _hidden(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The hidden vectors of an encoder's output (an attention encoder also returns its weights)."""
    return out[0] if isinstance(out, tuple) else out


class ConcertoNetwork(nn.Module):
    """Teacher (attention) and student (dense) networks whose outputs form positive pairs.

    Each modality has its own teacher and student branch; per-modality hidden
    vectors are summed before each network's tail (DSBN, dropout, dense, ReLU).
    A batch's ``weights`` (when set) weight its cells in the DSBN statistics.

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
    student
        The student's encoder: ``"linear"`` (a dense layer on the sparse cell vector, the paper's)
        or ``"attention"`` (an attention encoder like the teacher's, with its own weights).
    """

    def __init__(self, n_features: dict[str, int], n_domains: int, dim: int = 128, out_dim: int = 128,
                 dropout: float = 0.1, student: str = "linear"):
        super().__init__()
        if student not in STUDENTS:
            raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")
        self.modalities = list(n_features)
        self.teacher_encoders = nn.ModuleDict({m: AttentionEncoder(n, dim) for m, n in n_features.items()})
        self.student_encoders = nn.ModuleDict({m: STUDENTS[student](n, dim) for m, n in n_features.items()})
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
        return self.teacher_tail(hidden, batch.domains, batch.weights)

    def student(self, batch: CellBatch) -> torch.Tensor:
        hidden = sum(_hidden(self.student_encoders[m](batch.student[m])) for m in self.modalities
                     if m in batch.student)
        return self.student_tail(hidden, batch.domains, batch.weights)

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
