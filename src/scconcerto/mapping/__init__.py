"""The label decision of query mapping: the calibrated similarity-weighted vote of a cell's nearest reference
cells, the probability that its label is right and the probability that it is of a type the reference has, all
fitted on held-out reference cells (``docs/mapping.md``)."""

from .hierarchy import parent_labels, within_parent
from .label_model import DEFAULT_K, LabelModel, fit_label_model, query_features
from .posterior import VotePosterior, adjust_to_query_proportions, label_frequencies
from .scores import LogisticScore, agreement, density_ratio, neighbourhood_features

__all__ = ["DEFAULT_K", "VotePosterior", "LabelModel", "LogisticScore", "adjust_to_query_proportions", "agreement",
           "density_ratio", "fit_label_model", "label_frequencies", "neighbourhood_features", "parent_labels",
           "query_features", "within_parent"]
