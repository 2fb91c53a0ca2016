"""What uses an embedding: label transfer, clustering, attention markers, imputation, placement.

The neighbour search they use is :mod:`scconcerto.search`; its main names are re-exported here.
"""

from ..search import NeighborsResults, build_index, knn, l2_normalize
from .label_transfer import LabelTransfer, vote

__all__ = ["LabelTransfer", "NeighborsResults", "build_index", "knn", "l2_normalize", "vote"]

from .clustering import DEFAULT_SWEEP, LeidenSweep, cluster, leiden, leiden_sweep, neighbor_graph  # noqa: E402

__all__ += ["DEFAULT_SWEEP", "LeidenSweep", "cluster", "leiden", "leiden_sweep", "neighbor_graph"]

from .attention import rank_attention, ranked_names  # noqa: E402
from .attention_agreement import attention_agreement, attention_vs_expression, expression_markers  # noqa: E402

__all__ += ["attention_agreement", "attention_vs_expression", "expression_markers", "rank_attention", "ranked_names"]

from .imputation import impute_from_neighbors, neighbor_weights  # noqa: E402
from .placement import place_on_reference, reference_umap  # noqa: E402

__all__ += ["impute_from_neighbors", "neighbor_weights", "place_on_reference", "reference_umap"]
