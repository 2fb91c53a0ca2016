"""Seeded row samples shared by every module that fits or draws on a subset of cells."""

from __future__ import annotations

import numpy as np


def sample_rows(n: int, max_rows: int | None, seed: int = 0) -> np.ndarray:
    """All ``n`` row numbers (``max_rows`` ``None`` or at least ``n``), or a seeded, sorted sample of ``max_rows``
    of them without repeats."""
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, int(max_rows), replace=False))
