"""The user-facing model class and its save format."""

from .._keys import EMBEDDING_KEY
from .concerto import Concerto, default_epochs
from .storage import FORMAT_VERSION, ReferenceStore

__all__ = ["EMBEDDING_KEY", "FORMAT_VERSION", "Concerto", "ReferenceStore", "default_epochs"]
