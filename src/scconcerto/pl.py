"""``scc.pl``: the plots under a scanpy-like short name (an alias of :mod:`scconcerto.plotting`)."""

from .plotting import *  # noqa: F401,F403
from .plotting import __all__  # noqa: F401
