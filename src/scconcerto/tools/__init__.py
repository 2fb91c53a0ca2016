"""What uses an embedding: neighbours, label transfer (and more)."""

from .label_transfer import LabelTransfer, vote
from .neighbors import NeighborsResults, build_index, knn, l2_normalize

__all__ = ["LabelTransfer", "NeighborsResults", "build_index", "knn", "l2_normalize", "vote"]
