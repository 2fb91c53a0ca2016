"""The user-facing model class and its save format."""

from .concerto import EMBEDDING_KEY, Concerto, default_epochs
from .storage import FORMAT_VERSION, ReferenceStore

__all__ = ["EMBEDDING_KEY", "FORMAT_VERSION", "Concerto", "ReferenceStore", "default_epochs"]
