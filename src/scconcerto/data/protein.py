"""Antibody background: the level of each protein below which a cell is taken not to express it.

Every antibody of a CITE-seq panel binds every cell a little (ambient and
non-specific binding), so unlike a gene, a protein is "detected" in nearly all
cells. The model sees a protein only where it is above its background, as it
sees a gene only where it is detected: for each antibody a two-component
Gaussian mixture is fitted to the reference's normalized values, and the
background is the value above which the upper component is the more probable.
Values at or below it are set to zero (and so are not attended to).
"""

from __future__ import annotations

import numpy as np

from .._random import sample_rows

#: Cells used to fit each antibody's mixture (a seeded random subset of larger references).
MAX_FIT_CELLS = 50_000
_GRID = 1024


def _threshold(x: np.ndarray, seed: int) -> float:
    """Where the upper of two Gaussian components becomes the more probable (0 when not two-valued)."""
    from sklearn.mixture import GaussianMixture

    x = x[np.isfinite(x)]
    if np.unique(x).size < 3:
        return 0.0
    gm = GaussianMixture(2, random_state=seed).fit(x[:, None].astype(np.float64))
    lo, hi = np.argsort(gm.means_[:, 0])
    mu_lo, mu_hi = float(gm.means_[lo, 0]), float(gm.means_[hi, 0])
    grid = np.linspace(mu_lo, mu_hi, _GRID)
    upper = gm.predict_proba(grid[:, None])[:, hi] >= 0.5
    return float(grid[np.argmax(upper)]) if upper.any() else mu_hi


def fit_protein_background(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """Background level of each protein (column) of normalized values ``(n_cells, n_proteins)``.

    Parameters
    ----------
    values
        Normalized protein values of the reference (e.g. CLR), cells x proteins.
    seed
        Seed of the cell subset (references over :data:`MAX_FIT_CELLS` cells) and of the mixtures.

    Returns
    -------
    ndarray
        ``(n_proteins,)`` float32; ``0`` for a protein with fewer than three distinct values.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be cells x proteins, got shape {values.shape}")
    rows = sample_rows(values.shape[0], MAX_FIT_CELLS, seed)
    return np.array([_threshold(values[rows, j], seed) for j in range(values.shape[1])], dtype=np.float32)


def above_background(values: np.ndarray, background: np.ndarray | None) -> np.ndarray:
    """``values`` with every entry at or below its protein's background set to zero (a new array)."""
    if background is None or len(background) == 0:
        return values
    background = np.asarray(background, dtype=values.dtype)
    if background.shape != (values.shape[1],):
        raise ValueError(f"{background.shape[0]} background levels for {values.shape[1]} proteins")
    return np.where(values > background, values, np.zeros((), dtype=values.dtype))
