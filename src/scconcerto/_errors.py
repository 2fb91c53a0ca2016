"""The package's own error classes: every user-facing failure is one of these."""

from __future__ import annotations


class ScConcertoError(Exception):
    """Base class of every error scConcerto raises on purpose.

    The message says what is wrong, where, and how to fix it.
    """


class InputError(ScConcertoError, ValueError):
    """The user's data (AnnData, h5ad, keys, genes) cannot be used as given."""


class ModelFileError(ScConcertoError, OSError):
    """A model directory is missing, corrupt, tampered with or of an unknown format."""


class OutputExistsError(ScConcertoError, FileExistsError):
    """An output path exists and overwriting was not asked for."""


class OutputWriteError(ScConcertoError, OSError):
    """An output could not be written (disk full, permissions); nothing was left under its name."""
