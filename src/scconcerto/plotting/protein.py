"""Imputed against measured protein levels, one scatter panel per protein, with Pearson r."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._errors import InputError
from ._base import SaveArg, finish, subsample
from .._keys import IMPUTED_PROTEIN_KEY
from .outputs import imputed_protein


def pearson_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b`` (NaN for a constant column)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"Need two matrices of the same (cells x proteins) shape, got {a.shape} and {b.shape}.")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=0) / np.where(denom > 0, denom, 1), np.nan)


def measured_vs_imputed(adata: ad.AnnData, measured_key: str = "protein", imputed_key: str = IMPUTED_PROTEIN_KEY,
                        normalize: str | None = "clr") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Measured (normalized like the model's proteins) and imputed values of the proteins both hold.

    Parameters
    ----------
    adata
        Query with measured proteins in ``obsm[measured_key]`` (names in ``uns['protein_names']``
        or DataFrame columns) and imputed ones in ``obsm[imputed_key]``.
    measured_key, imputed_key
        The two ``obsm`` keys.
    normalize
        Normalization of the raw measured counts, the one the model uses (``"clr"`` or ``"log1p"``);
        ``None`` when they are already normalized.

    Returns
    -------
    measured, imputed, names
        ``(n_cells, n_shared)`` float32 matrices and the shared protein names (imputed order).
    """
    from ..data.setup import normalize_protein, protein_matrix

    found = imputed_protein(adata, imputed_key)
    if found is None:
        raise InputError(f"The AnnData has no imputed proteins `obsm[{imputed_key!r}]`; map an RNA query onto a "
                         "reference built with proteins first.")
    imputed, names = found
    raw, measured_names = protein_matrix(adata, measured_key)
    measured = normalize_protein(raw, normalize) if normalize else raw
    pos = pd.Index(measured_names).get_indexer(names)
    shared = np.flatnonzero(pos >= 0)
    if len(shared) == 0:
        raise InputError(f"None of the imputed proteins {names[:5]} is among the measured ones {measured_names[:5]}.")
    return measured[:, pos[shared]], imputed[:, shared], [names[i] for i in shared]


def protein_imputation(adata: ad.AnnData, measured_key: str = "protein", imputed_key: str = IMPUTED_PROTEIN_KEY,
                       normalize: str | None = "clr", proteins: Sequence[str] | None = None, max_panels: int = 12,
                       ncols: int = 4, max_points: int | None = 20_000, seed: int = 0,
                       ax: Axes | Sequence[Axes] | None = None, show: bool | None = None,
                       save: SaveArg = None) -> Figure:
    """Scatter of imputed against measured protein level, one panel per protein, titled with Pearson r.

    Parameters
    ----------
    adata
        Query holding both measured and imputed proteins (see :func:`measured_vs_imputed`).
    measured_key, imputed_key, normalize
        See :func:`measured_vs_imputed`; use the model's ``setup.protein_norm`` for ``normalize``.
    proteins
        Proteins to show (default: the best correlated ``max_panels``).
    max_panels, ncols
        Number of panels and panels per row.
    max_points
        Draw at most this many cells per panel (r uses all cells).
    seed
        Seed of the subsample.
    ax
        One axes per protein shown; ``None`` makes a grid.
    show, save
        As in scanpy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    measured, imputed, names = measured_vs_imputed(adata, measured_key, imputed_key, normalize)
    r = pearson_per_column(measured, imputed)
    if proteins is not None:
        missing = [p for p in proteins if p not in names]
        if missing:
            raise InputError(f"Proteins {missing[:5]} are not both measured and imputed (shared: {names[:10]}).")
        chosen = [names.index(p) for p in proteins]
    else:
        chosen = list(np.argsort(-np.nan_to_num(r, nan=-2), kind="stable")[:max_panels])
    if ax is None:
        ncols = max(1, min(ncols, len(chosen)))
        nrows = -(-len(chosen) // ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 2.7 * nrows), squeeze=False, layout="constrained")
        axes = list(grid.ravel())
        for extra in axes[len(chosen):]:
            extra.set_visible(False)
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) != len(chosen):
            raise InputError(f"ax has {len(axes)} axes for {len(chosen)} proteins; give one per protein.")
        fig = axes[0].figure
    rows = subsample(adata.n_obs, max_points, seed)
    for panel, j in zip(axes, chosen):
        x, y = measured[rows, j], imputed[rows, j]
        panel.scatter(x, y, s=3, alpha=0.4, linewidths=0, color="#4c72b0", rasterized=True)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        panel.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, linestyle="--")
        panel.set_title(f"{names[j]}  r = {r[j]:.2f}", fontsize=9)
        panel.set_xlabel("measured", fontsize=8)
        panel.set_ylabel("imputed", fontsize=8)
        panel.tick_params(labelsize=7)
    return finish(fig, "protein_imputation", show, save, created=ax is None)
