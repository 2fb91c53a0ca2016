"""The user-facing model class, its cell-type classifier and its save format."""

from .._keys import EMBEDDING_KEY
from .classifier import AnnotationPrediction, CellTypeClassifier, ClassifierState
from .concerto import Concerto, default_epochs
from .storage import FORMAT_VERSION, ReferenceStore

__all__ = ["EMBEDDING_KEY", "FORMAT_VERSION", "AnnotationPrediction", "CellTypeClassifier", "ClassifierState",
           "Concerto", "ReferenceStore", "default_epochs"]
