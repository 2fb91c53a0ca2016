"""What uses an embedding: neighbours, label transfer (and more)."""

from .label_transfer import (LabelTransfer, adjust_to_proportions, blend_votes, contested_rows, overrule,
                             rare_label_rows, rare_labels, second_opinion, veto_rows, vote)
from .neighbors import NeighborsResults, build_index, knn, l2_normalize

__all__ = ["LabelTransfer", "NeighborsResults", "adjust_to_proportions", "blend_votes", "build_index",
           "contested_rows", "knn", "l2_normalize", "overrule", "rare_label_rows", "rare_labels", "second_opinion",
           "veto_rows", "vote"]

from .clustering import DEFAULT_SWEEP, LeidenSweep, cluster, leiden, leiden_sweep, neighbor_graph  # noqa: E402

__all__ += ["DEFAULT_SWEEP", "LeidenSweep", "cluster", "leiden", "leiden_sweep", "neighbor_graph"]

from .attention import rank_attention, ranked_names  # noqa: E402
from .attention_agreement import attention_agreement, attention_vs_expression, expression_markers  # noqa: E402

__all__ += ["attention_agreement", "attention_vs_expression", "expression_markers", "rank_attention", "ranked_names"]

from .confidence import (CalibrationResult, ConfidenceModel, calibrate_confidence, density_ratio,  # noqa: E402
                         neighborhood_features)
from .hierarchy import hierarchical_transfer, knn_within_groups  # noqa: E402
from .imputation import impute_from_neighbors, neighbor_weights  # noqa: E402
from .placement import place_on_reference, reference_umap  # noqa: E402

__all__ += ["CalibrationResult", "ConfidenceModel", "calibrate_confidence", "density_ratio", "hierarchical_transfer",
            "impute_from_neighbors", "knn_within_groups", "neighbor_weights", "neighborhood_features",
            "place_on_reference", "reference_umap"]
