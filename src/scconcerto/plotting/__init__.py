"""Figures in scanpy's style: each function accepts ``ax=``, ``show=``, ``save=`` and returns the figure."""

from .annotation import confidence_histogram, confusion_matrix, confusion_table, sankey
from .integration import source_umap, umap_coords
from .mapping import mapping_umap, reference_umap_coords
from .protein import measured_vs_imputed, pearson_per_column, protein_imputation
from .training import loss_curve

__all__ = ["confidence_histogram", "confusion_matrix", "confusion_table", "loss_curve", "mapping_umap",
           "measured_vs_imputed", "pearson_per_column", "protein_imputation", "reference_umap_coords", "sankey",
           "source_umap", "umap_coords"]

from .attention import attention_dotplot, attention_heatmap  # noqa: E402

__all__ += ["attention_dotplot", "attention_heatmap"]
