"""The label decision of query mapping: a calibrated kernel-vote posterior, the probability that a label is right
and the probability that a cell is of a type the reference has, all fitted on held-out reference cells."""

from .hierarchy import parent_labels, within_parent
from .label_model import DEFAULT_K, LabelModel, fit_label_model, query_features
from .posterior import VotePosterior, adjust_to_query_proportions, label_frequencies
from .scores import LogisticScore, agreement, density_ratio, neighbourhood_features

__all__ = ["DEFAULT_K", "VotePosterior", "LabelModel", "LogisticScore", "adjust_to_query_proportions", "agreement",
           "density_ratio", "fit_label_model", "label_frequencies", "neighbourhood_features", "parent_labels",
           "query_features", "within_parent"]
