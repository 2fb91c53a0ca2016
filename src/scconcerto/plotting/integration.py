"""Per-source UMAP panels of an integrated embedding: one panel per source over all cells in grey."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._errors import InputError
from ._base import (BACKGROUND, SaveArg, as_strings, categorical_legend, category_colors, clean_embedding_axes,
                    finish, point_size, subsample)


def umap_coords(embedding: np.ndarray, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """2-d UMAP of an embedding (scanpy neighbours, searched by faiss, + UMAP on a throwaway AnnData), ``(n, 2)``."""
    import scanpy as sc

    from ..search.knn_graph import FaissKNNTransformer

    x = np.ascontiguousarray(embedding, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 3:
        raise InputError(f"Need a (cells x dims) embedding of at least 3 cells for a UMAP, got shape {x.shape}.")
    tmp = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(x.shape[0]).astype(str)), obsm={"X_rep": x})
    k = min(n_neighbors, x.shape[0] - 1)
    sc.pp.neighbors(tmp, use_rep="X_rep", random_state=seed, transformer=FaissKNNTransformer(k, "euclidean"))
    sc.tl.umap(tmp, random_state=seed)
    return np.asarray(tmp.obsm["X_umap"], dtype=np.float32)


def _coords(adata: ad.AnnData, basis: str, use_rep: str, seed: int) -> np.ndarray:
    if basis in adata.obsm:
        return np.asarray(adata.obsm[basis], dtype=np.float32)[:, :2]
    if use_rep in adata.obsm:
        return umap_coords(np.asarray(adata.obsm[use_rep]), seed=seed)
    raise InputError(f"The AnnData has neither `obsm[{basis!r}]` nor `obsm[{use_rep!r}]` (keys: {list(adata.obsm)}). "
                     "Embed it first (`scconcerto embed`) or name the coordinates with basis=.")


def source_umap(adata: ad.AnnData, source_key: str, color: str | None = None, basis: str = "X_umap",
                use_rep: str = "X_concerto", ncols: int = 4, max_points: int | None = 100_000, seed: int = 0,
                ax: Axes | Sequence[Axes] | None = None, show: bool | None = None, save: SaveArg = None) -> Figure:
    """One UMAP panel per source: that source's cells in colour over all cells in grey.

    A well integrated embedding shows every source spread over the same
    regions (and, coloured by cell type, the same types in the same places).

    Parameters
    ----------
    adata
        Cells with ``obsm[basis]`` (2-d coordinates) or ``obsm[use_rep]`` (embedding; a UMAP is computed
        on the fly, the AnnData is not changed).
    source_key
        ``obs`` column of the source (batch, technology, dataset) of each cell.
    color
        ``obs`` column (categorical) colouring each panel's cells; ``None``: one colour per source.
    basis, use_rep
        Coordinates to draw, or the embedding to compute them from.
    ncols
        Panels per row.
    max_points
        Draw at most this many cells (seeded subsample).
    seed
        Seed of the subsample and of a computed UMAP.
    ax
        Axes to draw into, one per source (in sorted source order); ``None`` makes a grid.
    show, save
        As in scanpy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if source_key not in adata.obs:
        raise InputError(f"`obs[{source_key!r}]` is not in the AnnData (columns: {list(adata.obs.columns)[:20]}).")
    if color is not None and color not in adata.obs:
        raise InputError(f"color={color!r} is not a column of `obs`.")
    xy = _coords(adata, basis, use_rep, seed)
    rows = subsample(adata.n_obs, max_points, seed)
    xy = xy[rows]
    src = as_strings(adata.obs[source_key].to_numpy()[rows])
    sources = sorted(set(src))
    if ax is None:
        ncols = max(1, min(ncols, len(sources)))
        nrows = -(-len(sources) // ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(3.4 * ncols + (1.8 if color else 0), 3.2 * nrows),
                                 squeeze=False, layout="constrained")
        axes = list(grid.ravel())
        for extra in axes[len(sources):]:
            extra.set_visible(False)
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) != len(sources):
            raise InputError(f"ax has {len(axes)} axes but there are {len(sources)} sources {sources}; "
                             "give one axes per source, or ax=None.")
        fig = axes[0].figure
    if color is None:
        values, colors = src, category_colors(sources)
    else:
        values = as_strings(adata.obs[color].to_numpy()[rows])
        cats = adata.obs[color].cat.categories if isinstance(adata.obs[color].dtype, pd.CategoricalDtype) else None
        colors = category_colors([str(c) for c in cats] if cats is not None else sorted(set(values)))
    size = point_size(len(rows))
    for panel, source in zip(axes, sources):
        mine = src == source
        panel.scatter(*xy[~mine].T, s=size, c=BACKGROUND, linewidths=0, rasterized=True)
        panel.scatter(*xy[mine].T, s=size, c=[colors.get(v, "#444444") for v in values[mine]], linewidths=0,
                      rasterized=True)
        panel.set_title(f"{source} ({int(mine.sum())} cells)", fontsize=9)
        clean_embedding_axes(panel)
    if color is not None:
        categorical_legend(axes[len(sources) - 1], colors, list(values))
    return finish(fig, f"source_umap_{source_key}", show, save, created=ax is None)
