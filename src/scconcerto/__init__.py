"""scConcerto: contrastive teacher-student single-cell embeddings, reference building and query mapping."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scconcerto")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from ._errors import InputError, ModelFileError, OutputExistsError, OutputWriteError, ScConcertoError  # noqa: E402
from .model import Concerto  # noqa: E402
from . import pl, tl  # noqa: E402

__all__ = ["Concerto", "InputError", "ModelFileError", "OutputExistsError", "OutputWriteError", "ScConcertoError",
           "__version__"]
