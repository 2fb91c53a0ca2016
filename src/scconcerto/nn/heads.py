"""Classifier heads on the teacher, for supervised annotation."""

from __future__ import annotations

import torch
from torch import nn

from .._ragged import Ragged
from .encoders import AttentionEncoder, ProjectionTail
from .network import ConcertoNetwork


class ClassifierHead(nn.Module):
    """Dense layer from the teacher output to class logits (softmax is applied by the loss / at prediction).

    Parameters
    ----------
    in_dim
        Width of the teacher output.
    n_classes
        Number of cell types.
    dropout
        Dropout on the head's input at training time.
    """

    def __init__(self, in_dim: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, n_classes)

    @property
    def n_classes(self) -> int:
        return int(self.linear.out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features))


class TeacherClassifier(nn.Module):
    """The teacher network of Concerto (attention encoders + DSBN tail) with a classifier head.

    Only the teacher is kept: the student is not needed to classify. Built from
    a (pre-trained or freshly initialised) :class:`~scconcerto.nn.ConcertoNetwork`
    with :meth:`from_network`, or empty with the same sizes (to load weights).

    Parameters
    ----------
    n_features
        Vocabulary size per modality, e.g. ``{"rna": 2000}``.
    n_domains
        Sources with their own batch-norm statistics.
    n_classes
        Number of cell types.
    dim, out_dim, dropout
        As in :class:`~scconcerto.nn.ConcertoNetwork`.
    head_dropout
        Dropout before the head.
    """

    def __init__(self, n_features: dict[str, int], n_domains: int, n_classes: int, dim: int = 128,
                 out_dim: int = 128, dropout: float = 0.3, head_dropout: float = 0.0):
        super().__init__()
        self.modalities = list(n_features)
        self.encoders = nn.ModuleDict({m: AttentionEncoder(n, dim) for m, n in n_features.items()})
        self.tail = ProjectionTail(dim, out_dim, n_domains, dropout)
        self.head = ClassifierHead(out_dim, n_classes, head_dropout)

    @classmethod
    def from_network(cls, network: ConcertoNetwork, n_classes: int, head_dropout: float = 0.0) -> "TeacherClassifier":
        """A classifier whose teacher starts as a copy of ``network``'s teacher (the head is freshly initialised)."""
        sizes = {m: int(enc.embedding.shape[0]) for m, enc in network.teacher_encoders.items()}
        tail = network.teacher_tail
        model = cls(sizes, tail.norm.n_domains, n_classes, dim=tail.norm.num_features, out_dim=tail.dense.out_features,
                    dropout=float(tail.dropout.p), head_dropout=head_dropout)
        model.encoders.load_state_dict(network.teacher_encoders.state_dict())
        model.tail.load_state_dict(network.teacher_tail.state_dict())
        return model.to(next(network.parameters()).device)

    @property
    def n_classes(self) -> int:
        return self.head.n_classes

    @property
    def n_domains(self) -> int:
        return self.tail.norm.n_domains

    def architecture(self) -> dict:
        """JSON-able sizes that rebuild an empty classifier of this shape (``TeacherClassifier(**arch)``)."""
        return {"n_features": {m: int(e.embedding.shape[0]) for m, e in self.encoders.items()},
                "n_domains": self.n_domains, "n_classes": self.n_classes, "dim": self.tail.norm.num_features,
                "out_dim": self.tail.dense.out_features, "dropout": float(self.tail.dropout.p),
                "head_dropout": float(self.head.dropout.p)}

    def hidden(self, views: dict[str, Ragged]) -> torch.Tensor:
        """The sum of the attention-pooled modalities: the input of the source-specific tail."""
        hidden = None
        for m in self.modalities:
            if m not in views:
                continue
            h, _ = self.encoders[m](views[m])
            hidden = h if hidden is None else hidden + h
        if hidden is None:
            raise ValueError(f"the batch has none of the classifier's modalities {self.modalities}")
        return hidden

    def features(self, views: dict[str, Ragged], domains: torch.Tensor) -> torch.Tensor:
        """Teacher output ``ReLU(Dense(Dropout(DSBN(sum of attention-pooled modalities))))``."""
        return self.tail(self.hidden(views), domains)

    def forward(self, views: dict[str, Ragged], domains: torch.Tensor) -> torch.Tensor:
        """Class logits ``(n_cells, n_classes)``."""
        return self.head(self.features(views, domains))

    def domain_norms(self) -> list[nn.Module]:
        return [self.tail.norm]
