"""One adapter per method, all with the :class:`~benchmarks.peers.base.Method` interface.

``available_methods()`` lists the methods whose packages import here; ``make(name, **options)``
builds one.
"""

from __future__ import annotations

import importlib.util

from .base import Mapping, Method, Split, lognorm, counts

#: method name -> (module, class, required package or None)
REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "scconcerto": ("concerto", "ConcertoMethod", None),
    "pca_knn": ("pca_knn", "PcaKnnMethod", None),
    "celltypist": ("celltypist_peer", "CellTypistMethod", "celltypist"),
    "symphony": ("symphony", "SymphonyMethod", "symphonypy"),
    "scanvi": ("scanvi", "ScanviMethod", "scvi"),
}


def is_available(name: str) -> bool:
    """Whether the package ``name`` needs is installed."""
    package = REGISTRY[name][2]
    return package is None or importlib.util.find_spec(package) is not None


def available_methods() -> list[str]:
    """The registered methods whose packages are installed, scConcerto first."""
    return [name for name in REGISTRY if is_available(name)]


def make(name: str, **options) -> Method:
    """Build the method ``name`` with ``options`` (e.g. ``epochs``, ``seed``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(REGISTRY)}")
    module, cls, _ = REGISTRY[name]
    mod = importlib.import_module(f"{__name__}.{module}")
    return getattr(mod, cls)(**options)


__all__ = ["Mapping", "Method", "Split", "REGISTRY", "available_methods", "counts", "is_available", "lognorm", "make"]
