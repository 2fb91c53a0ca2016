"""Data layer: validation, gene vocabulary, preprocessing, index-value batches, sampling."""

from .cells import CellMatrix, subsample_rows
from .preprocess import detect_input_kind, normalize_values
from .sampling import SourceBatchSampler, source_batches
from .setup import DataSetup, PreparedCells, label_codes, prepare_cells, setup_reference
from .vocabulary import GeneAlignment, GeneVocabulary

__all__ = ["CellMatrix", "DataSetup", "GeneAlignment", "GeneVocabulary", "PreparedCells", "SourceBatchSampler",
           "detect_input_kind", "label_codes", "normalize_values", "prepare_cells", "setup_reference",
           "source_batches", "subsample_rows"]
