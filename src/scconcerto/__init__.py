"""scConcerto: contrastive teacher-student single-cell embeddings, reference building and query mapping.

The heavy parts (torch, Lightning, scanpy) load on first use: ``import scconcerto`` is quick, and
``scconcerto.Concerto``, ``scconcerto.pl``, ``scconcerto.tl`` import what they need when reached.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import InputError, ModelFileError, OutputExistsError, OutputWriteError, ScConcertoError  # noqa: E402
from ._settings import settings  # noqa: E402

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily (``__getattr__``)
    from . import datasets, pl, tl
    from .data.readers import read
    from .model import CellTypeClassifier, Concerto, ReferenceMapper

__all__ = ["CellTypeClassifier", "Concerto", "InputError", "ModelFileError", "OutputExistsError", "OutputWriteError",
           "ReferenceMapper", "ScConcertoError", "__version__", "datasets", "pl", "read", "settings", "tl"]

_LAZY = {"Concerto": (".model", "Concerto"), "CellTypeClassifier": (".model", "CellTypeClassifier"),
         "ReferenceMapper": (".model", "ReferenceMapper"), "read": (".data.readers", "read"),
         **{name: (f".{name}", None) for name in ("pl", "tl", "datasets", "metrics", "tools", "plotting", "model",
                                                   "data", "report", "nn", "train", "search")}}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scconcerto")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    if name not in _LAZY:
        raise AttributeError(f"module 'scconcerto' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
