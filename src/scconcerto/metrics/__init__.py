"""Evaluation metrics: pure functions, numpy arrays in, floats (or dicts) out.

* annotation: :func:`accuracy`, :func:`f1_per_class`, :func:`macro_f1`,
  :func:`median_f1`, :func:`annotation_report`;
* clustering: :func:`ari`, :func:`nmi`, :func:`leiden_clusters`,
  :func:`best_leiden`;
* integration (scib conventions, higher is better): :func:`knn_label_accuracy`,
  :func:`cross_batch_accuracy`,
  :func:`clisi`, :func:`silhouette_label`, :func:`isolated_label_score`,
  :func:`graph_connectivity`, :func:`batch_entropy`, :func:`ilisi`,
  :func:`silhouette_batch`, :func:`kbet_acceptance`;
* geometry (Wang & Isola 2020, lower is better): :func:`alignment`,
  :func:`uniformity`.
"""

from __future__ import annotations

from .annotation import accuracy, annotation_report, f1_per_class, macro_f1, median_f1
from .clustering import DEFAULT_RESOLUTIONS, ari, best_leiden, leiden_clusters, nmi
from .geometry import alignment, uniformity
from .integration import (
    batch_entropy,
    clisi,
    cross_batch_accuracy,
    graph_connectivity,
    ilisi,
    isolated_label_score,
    kbet_acceptance,
    knn_label_accuracy,
    silhouette_batch,
    silhouette_label,
)

__all__ = [
    "accuracy",
    "f1_per_class",
    "macro_f1",
    "median_f1",
    "annotation_report",
    "ari",
    "nmi",
    "leiden_clusters",
    "best_leiden",
    "DEFAULT_RESOLUTIONS",
    "knn_label_accuracy",
    "cross_batch_accuracy",
    "clisi",
    "silhouette_label",
    "isolated_label_score",
    "graph_connectivity",
    "batch_entropy",
    "ilisi",
    "silhouette_batch",
    "kbet_acceptance",
    "alignment",
    "uniformity",
]
