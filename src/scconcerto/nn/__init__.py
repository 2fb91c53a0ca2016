"""Torch modules and losses only: no AnnData here."""

from .attention import attention_pool, segment_softmax
from .dsbn import DomainSpecificBatchNorm1d
from .encoders import AttentionEncoder, ProjectionTail, SparseLinearEncoder
from .losses import nt_xent
from .network import ConcertoNetwork

__all__ = ["AttentionEncoder", "ConcertoNetwork", "DomainSpecificBatchNorm1d", "ProjectionTail",
           "SparseLinearEncoder", "attention_pool", "nt_xent", "segment_softmax"]
