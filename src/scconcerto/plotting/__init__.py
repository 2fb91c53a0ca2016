"""Figures in scanpy's style: each function accepts ``ax=``, ``show=``, ``save=`` and returns the figure.

:mod:`scconcerto.plotting.outputs` reads what mapping and annotation wrote into a query.
"""

from .annotation import (confidence_by_type, confidence_histogram, confusion_matrix, confusion_table, level_sankey,
                         sankey)
from .integration import source_umap, umap_coords
from .mapping import label_umap, mapping_umap, reference_umap_coords
from .protein import measured_vs_imputed, pearson_per_column, protein_imputation
from .training import loss_curve

__all__ = ["confidence_by_type", "confidence_histogram", "confusion_matrix", "confusion_table", "label_umap",
           "level_sankey", "loss_curve", "mapping_umap", "measured_vs_imputed", "pearson_per_column",
           "protein_imputation", "reference_umap_coords", "sankey", "source_umap", "umap_coords"]

from .attention import attention_dotplot, attention_heatmap  # noqa: E402

__all__ += ["attention_dotplot", "attention_heatmap"]
