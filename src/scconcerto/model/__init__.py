"""The user-facing model class, its reference mapper and cell-type classifier, and its save format."""

from .._keys import EMBEDDING_KEY
from .classifier import AnnotationPrediction, CellTypeClassifier, ClassifierState
from .concerto import Concerto, default_epochs
from .mapper import MapOptions, MappingResult, MappingState, ReferenceMapper
from .storage import FORMAT_VERSION, ReferenceStore

__all__ = ["EMBEDDING_KEY", "FORMAT_VERSION", "AnnotationPrediction", "CellTypeClassifier", "ClassifierState",
           "Concerto", "MapOptions", "MappingResult", "MappingState", "ReferenceMapper", "ReferenceStore", "default_epochs"]
