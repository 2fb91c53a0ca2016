"""Package settings: how much scConcerto logs, and when it draws progress bars (``scconcerto.settings``).

Messages go to the ``"scconcerto"`` logger, on standard error. Progress bars
are drawn on standard error too, by default only where someone watches: a
terminal or a Jupyter notebook; elsewhere (a log file, a pipe, a batch job)
training logs one line per epoch at the ``info`` level instead.

Examples
--------
>>> import scconcerto as scc
>>> scc.settings.verbosity = "info"  # one line per training epoch, what was done  # doctest: +SKIP
>>> scc.settings.progress = False  # never draw progress bars  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Settings", "quiet_third_party", "settings"]

LOGGER = "scconcerto"
_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
_BY_NUMBER = ["error", "warning", "info", "debug"]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (so redirections and captures see the messages)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # noqa: ANN201 - a text stream
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # set by StreamHandler.__init__; always sys.stderr
        pass


class Settings:
    """scConcerto's settings, as ``scanpy.settings``: ``verbosity`` and ``progress``.

    Attributes
    ----------
    verbosity
        ``"error"`` (0), ``"warning"`` (1, the default), ``"info"`` (2: what was done, one line
        per training epoch when no progress bar is drawn) or ``"debug"`` (3). Setting it attaches
        one handler writing the ``"scconcerto"`` logger's messages to standard error.
    progress
        ``"auto"`` (default): progress bars when standard error is a terminal or in a Jupyter
        notebook; ``True``: always; ``False``: never. A function's own ``progress=`` argument wins.
    """

    def __init__(self) -> None:
        self._verbosity = "warning"
        self._progress: bool | str = "auto"

    @property
    def verbosity(self) -> str:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int | str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"verbosity is one of {_BY_NUMBER} or 0-3, got {value!r}.")
        name = _BY_NUMBER[min(max(int(value), 0), 3)] if isinstance(value, int) else str(value).lower()
        if name not in _LEVELS:
            raise ValueError(f"verbosity is one of {_BY_NUMBER} or 0-3, got {value!r}.")
        self._verbosity = name
        logger = logging.getLogger(LOGGER)
        logger.setLevel(_LEVELS[name])
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)

    @property
    def progress(self) -> bool | str:
        return self._progress

    @progress.setter
    def progress(self, value: bool | str) -> None:
        if value not in (True, False, "auto"):
            raise ValueError(f"progress is True, False or 'auto', got {value!r}.")
        self._progress = value

    def show_progress(self, asked: bool | None = None) -> bool:
        """Whether to draw progress bars: ``asked`` when given, else the setting (``"auto"``: a watcher)."""
        if asked is not None:
            return bool(asked)
        if self._progress != "auto":
            return bool(self._progress)
        return _on_terminal() or _in_notebook()

    def __repr__(self) -> str:
        return f"Settings(verbosity={self._verbosity!r}, progress={self._progress!r})"


def _on_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


settings = Settings()

# Warnings of the libraries under us that say nothing to a user of scConcerto (deprecations inside
# Lightning and torch, advice about data-loader workers our in-memory batches do not need).
_QUIET = [
    (DeprecationWarning, r".*"),
    (FutureWarning, r".*"),
    (UserWarning, r".*does not have many workers.*"),
    (UserWarning, r".*IterableDataset.*__len__.*"),
    (UserWarning, r".*The number of training batches.*is smaller than the logging interval.*"),
    (UserWarning, r".*GPU available but not used.*"),
    (UserWarning, r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*"),
]


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Inside the block, hide the third-party warnings listed in ``_QUIET`` (the caller's filters come back after).

    Used around the calls into Lightning and scanpy, never set globally: a user's own code keeps
    every warning.
    """
    with warnings.catch_warnings():
        for category, message in _QUIET:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
