"""Mean teacher attention per cell group over each group's top-ranked features: heatmap and dot plot.

Drawn with scanpy's :class:`~scanpy.pl.MatrixPlot` / :class:`~scanpy.pl.DotPlot`
on the cells x features attention matrix, so the figures look like
``sc.pl.matrixplot`` / ``sc.pl.dotplot`` (features bracketed by the group that
ranked them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._errors import InputError
from ._base import SaveArg, finish

if TYPE_CHECKING:
    from ..model import Concerto
    from ..tools.attention import AttentionWeights


def top_features(adata: ad.AnnData, groupby: str, attention: AttentionWeights | sp.spmatrix, features: pd.Index,
                 modality: str, n_top: int, key: str | None) -> dict[str, list[str]]:
    """Each group's top features with a positive score (attended more than in the other cells).

    Taken from ``adata.uns[key]`` when it ranks this groupby and modality, else ranked here by contrast
    (:func:`~scconcerto.tools.attention.rank_attention`, nothing written). A feature ranked by several groups is
    shown once, under the first group.
    """
    from ..tools.attention import group_codes, rank_attention

    codes, groups = group_codes(adata, groupby)
    stored = adata.uns.get(key, {}) if key else {}
    params = stored.get("params", {}) if isinstance(stored, dict) else {}
    per_group: dict[str, list[str]] = {}
    if params.get("groupby") == groupby and params.get("modality", "rna") == modality:
        names, scores = stored["names"], stored["scores"]
        for g in names.dtype.names:
            ranked = pd.DataFrame({"name": np.asarray(names[g], dtype=object), "score": np.asarray(scores[g])})
            per_group[str(g)] = ranked.loc[ranked["score"] > 0, "name"].astype(str).head(n_top).tolist()
    else:
        tables = rank_attention(adata, groupby, attention=attention, modality=modality, n_top=n_top,
                                method="contrast", key_added="")
        per_group = {g: t.loc[t["score"] > 0, "feature"].tolist() for g, t in tables.items()}
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for g in groups:
        fresh = [f for f in per_group.get(g, []) if f not in seen and f in features]
        seen.update(fresh)
        if fresh:
            out[g] = fresh
    if not out:
        raise InputError("No group attends any feature more than the other cells do; nothing to plot.")
    return out


def _attention_plot(kind: str, adata: ad.AnnData, groupby: str, model: Concerto | None,
                    attention: AttentionWeights | sp.spmatrix | None, modality: str, n_top: int, key: str | None,
                    standard_scale: str | None, cmap: str, title: str | None, figsize: tuple[float, float] | None,
                    ax: Axes | None, show: bool | None, save: SaveArg, **kwargs: Any) -> Figure:
    import scanpy as sc

    from ..tools.attention import UNS_KEY, attention_matrix, group_codes

    if n_top < 1:
        raise InputError(f"n_top must be at least 1 feature per group, got {n_top}.")
    if attention is None and model is not None:
        attention = model.attention(adata)  # computed once, for the matrix and the ranking
    matrix, features = attention_matrix(adata, model, attention, modality)
    if key is None:
        key = UNS_KEY if modality == "rna" else f"{UNS_KEY}_{modality}"
    shown = top_features(adata, groupby, attention, features, modality, n_top, key)
    codes, groups = group_codes(adata, groupby)
    keep = np.flatnonzero(codes >= 0)
    cells = ad.AnnData(X=matrix[keep], var=pd.DataFrame(index=features.astype(str)),
                       obs=pd.DataFrame({groupby: pd.Categorical.from_codes(codes[keep], categories=groups)},
                                        index=adata.obs_names[keep].astype(str)))
    label = f"Mean {modality.upper() if modality == 'rna' else modality} attention\nin group"
    if standard_scale == "var":
        label += "\n(scaled per feature)"
    common = dict(var_names=shown, groupby=groupby, standard_scale=standard_scale, title=title, figsize=figsize,
                  ax=ax, **kwargs)
    if kind == "heatmap":
        plot = sc.pl.MatrixPlot(cells, **common).style(cmap=cmap).legend(title=label)
    else:
        plot = sc.pl.DotPlot(cells, expression_cutoff=0.0, **common).style(cmap=cmap).legend(
            colorbar_title=label, size_title="Fraction of cells\nattending (%)")
    plot.make_figure()
    return finish(plot.fig, f"attention_{kind}_{modality}", show, save, created=ax is None)


def attention_heatmap(adata: ad.AnnData, groupby: str, model: Concerto | None = None,
                      attention: AttentionWeights | sp.spmatrix | None = None, modality: str = "rna",
                      n_top: int = 5, key: str | None = None, standard_scale: str | None = "var",
                      cmap: str = "viridis", title: str | None = None, figsize: tuple[float, float] | None = None,
                      ax: Axes | None = None, show: bool | None = None, save: SaveArg = None,
                      **kwargs: Any) -> Figure:
    """Heatmap of the mean attention of each group (rows) on each group's top features (columns).

    Parameters
    ----------
    adata
        The cells, with their groups in ``obs[groupby]``.
    groupby
        ``obs`` column of the groups.
    model, attention
        The trained model, or weights from ``model.attention(adata)`` (reused when given).
    modality
        ``"rna"`` or ``"protein"``.
    n_top
        Features per group. Taken from ``adata.uns[key]`` when it holds a
        ranking of this ``groupby`` and modality (see
        :func:`~scconcerto.tools.rank_attention`), else ranked here by contrast.
    key
        ``uns`` key of a ranking (default ``"rank_attention"``, or
        ``"rank_attention_protein"``).
    standard_scale
        ``"var"``: scale each feature to 0-1 across groups; ``"group"``; or ``None``.
    cmap, title, figsize
        Looks.
    ax
        Draw into this axes (its area is split like scanpy does).
    show
        Show the figure; ``None``: only for a new figure in an interactive session.
    save
        File path (format from the suffix), or ``True`` for scanpy's figure directory.
    **kwargs
        Passed to :class:`scanpy.pl.MatrixPlot`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> attention_heatmap(adata, "cell_type", model=model, save="attention.png")  # doctest: +SKIP
    """
    return _attention_plot("heatmap", adata, groupby, model, attention, modality, n_top, key, standard_scale,
                           cmap, title, figsize, ax, show, save, **kwargs)


def attention_dotplot(adata: ad.AnnData, groupby: str, model: Concerto | None = None,
                      attention: AttentionWeights | sp.spmatrix | None = None, modality: str = "rna",
                      n_top: int = 5, key: str | None = None, standard_scale: str | None = "var",
                      cmap: str = "Reds", title: str | None = None, figsize: tuple[float, float] | None = None,
                      ax: Axes | None = None, show: bool | None = None, save: SaveArg = None,
                      **kwargs: Any) -> Figure:
    """Dot plot: colour = mean attention of each group on each top feature, size = fraction of cells attending.

    A cell "attends" a feature when the feature is among its expressed ones
    (its weight is non-zero), so the dot size is the detection rate.
    Parameters are those of :func:`attention_heatmap` (``**kwargs`` go to
    :class:`scanpy.pl.DotPlot`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    return _attention_plot("dotplot", adata, groupby, model, attention, modality, n_top, key, standard_scale,
                           cmap, title, figsize, ax, show, save, **kwargs)
