"""``scc.tl``: the tools under a scanpy-like short name (an alias of :mod:`scconcerto.tools`)."""

from .tools import *  # noqa: F401,F403
from .tools import __all__  # noqa: F401
