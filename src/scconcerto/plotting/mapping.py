"""The query placed on the reference UMAP, coloured by predicted label, confidence or source."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._errors import InputError
from .._keys import REFERENCE_UMAP_KEY, UNKNOWN_LABEL, confidence_key
from ._base import (BACKGROUND, SaveArg, as_strings, categorical_legend, category_colors, clean_embedding_axes,
                    finish, new_axes, point_size, subsample)
from .outputs import check_mapped_onto, mapped_label_keys, predicted_labels, require_obs

if TYPE_CHECKING:
    from ..model import Concerto


def reference_umap_coords(model: "Concerto") -> np.ndarray:
    """The reference UMAP stored with the model (:meth:`~scconcerto.Concerto.reference_umap`), ``(n_ref, 2)``."""
    ref = getattr(model, "reference", None)
    coords = model.reference_umap() if ref is not None else None
    if coords is None:
        raise InputError("The model stores no reference UMAP. Prepare the reference with one "
                         "(`model.prepare_mapping(umap=True)`), or pass `reference_coords=`.")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] != ref.embedding.shape[0]:
        raise InputError(f"The stored reference UMAP has shape {coords.shape}; expected ({ref.embedding.shape[0]}, 2).")
    return coords


def reference_labels(model: "Concerto", label_key: str) -> np.ndarray:
    """Reference cells' labels as strings (``"nan"`` where unlabeled)."""
    if label_key not in model.setup.labels or label_key not in model.reference.labels:
        raise InputError(f"The model has no reference labels {label_key!r} (it has {list(model.setup.labels)}).")
    cats = np.asarray(list(model.setup.labels[label_key]) + ["nan"], dtype=object)
    return cats[model.reference.labels[label_key]]  # code -1 picks the trailing "nan"


def _default_label_key(query: ad.AnnData, model: "Concerto | None") -> str:
    mapped = mapped_label_keys(query)
    if model is not None:
        mapped = [k for k in model.setup.labels if k in mapped] or mapped
    if not mapped:
        raise InputError("The query has no `<label>_pred` column: map it first (`scconcerto map`) or pass "
                         "label_key= naming a key whose predictions are in `obs`.")
    return mapped[0]


def mapping_umap(query: ad.AnnData, model: "Concerto | None" = None,
                 color: Literal["label", "confidence", "source"] = "label", label_key: str | None = None,
                 source_key: str | None = None, basis: str = REFERENCE_UMAP_KEY,
                 reference_coords: np.ndarray | None = None, background: Literal["labels", "grey"] = "labels",
                 max_points: int | None = 100_000, seed: int = 0, title: str | None = None,
                 ax: Axes | None = None, show: bool | None = None, save: SaveArg = None) -> Figure:
    """The reference UMAP with the query cells placed on it.

    Reference cells are drawn first (light grey, or with ``color="label"`` and
    ``background="labels"`` faintly in their label's colour), query cells on top.

    Parameters
    ----------
    query
        Mapped query with ``obsm[basis]`` (its cells' reference-UMAP coordinates).
    model
        The reference model; gives the reference UMAP (``model.reference.umap``)
        and labels. May be ``None`` when ``reference_coords`` is given.
    color
        ``"label"``: predicted label (``obs['<label_key>_pred']``, unknown cells in black);
        ``"confidence"``: ``obs['<label_key>_confidence']`` on a 0-1 colour scale;
        ``"source"``: the query's source (``obs[source_key]``, default the model's batch key).
    label_key
        Reference label key whose predictions are shown (default: the first mapped one).
    source_key
        ``obs`` column of the query's sources for ``color="source"``.
    basis
        ``obsm`` key of the query's coordinates on the reference UMAP.
    reference_coords
        ``(n_ref, 2)`` reference UMAP, overriding the model's.
    background
        With ``color="label"``: draw the reference cells faintly in their label's colour (``"labels"``) or in
        grey (``"grey"``).
    max_points
        Draw at most this many cells of each of reference and query (seeded subsample).
    seed
        Seed of the subsample.
    title
        Axes title (default: says what is coloured).
    ax, show, save
        As in scanpy: draw into ``ax``; show the figure; save it to a path (or ``True``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if color not in ("label", "confidence", "source"):
        raise InputError(f"color must be 'label', 'confidence' or 'source', got {color!r}.")
    if background not in ("labels", "grey"):
        raise InputError(f"background must be 'labels' or 'grey', got {background!r}.")
    if basis not in query.obsm:
        raise InputError(f"The query has no `obsm[{basis!r}]` (its place on the reference UMAP; keys: "
                         f"{list(query.obsm)}). Map it first (`scconcerto map`), or pass basis=.")
    if model is not None and reference_coords is None:
        check_mapped_onto(query, model, require=False)  # never draw a query on a reference it was not mapped onto
    q_xy = np.asarray(query.obsm[basis], dtype=np.float32)[:, :2]
    ref_xy = reference_coords if reference_coords is not None else (
        reference_umap_coords(model) if model is not None else None)
    if ref_xy is None:
        raise InputError("Give the reference model (or reference_coords=) to draw the reference UMAP.")
    ref_xy = np.asarray(ref_xy, dtype=np.float32)
    fig, ax_ = new_axes(ax, figsize=(6.5, 4.8))
    r_rows = subsample(len(ref_xy), max_points, seed)
    q_rows = subsample(len(q_xy), max_points, seed + 1)
    size = point_size(len(r_rows) + len(q_rows))

    if color == "label":
        label_key = label_key or _default_label_key(query, model)
        pred = predicted_labels(query, label_key)
        ref_lab = reference_labels(model, label_key) if model is not None and background == "labels" else None
        cats = list(model.setup.labels[label_key]) if model is not None else sorted(set(pred) - {UNKNOWN_LABEL})
        cats += [c for c in sorted(set(pred)) if c not in cats and c != UNKNOWN_LABEL] + [UNKNOWN_LABEL]
        colors = category_colors(cats)
        if ref_lab is not None:
            rc = np.array([colors.get(c, BACKGROUND) for c in ref_lab[r_rows]], dtype=object)
            ax_.scatter(*ref_xy[r_rows].T, s=size, c=list(rc), alpha=0.15, linewidths=0, rasterized=True)
        else:
            ax_.scatter(*ref_xy[r_rows].T, s=size, c=BACKGROUND, linewidths=0, rasterized=True)
        qc = [colors[c] for c in pred[q_rows]]
        ax_.scatter(*q_xy[q_rows].T, s=size * 1.5, c=qc, linewidths=0.2, edgecolors="white", rasterized=True)
        if ref_lab is None:
            categorical_legend(ax_, {"reference cells": BACKGROUND, **colors}, ["reference cells", *pred[q_rows]])
        else:
            categorical_legend(ax_, colors, list(pred[q_rows]))
        what = f"query: predicted {label_key}" + (" (reference faint)" if ref_lab is not None else
                                                  ", reference in grey")
    elif color == "confidence":
        label_key = label_key or _default_label_key(query, model)
        conf = np.asarray(require_obs(query, confidence_key(label_key), "Map the query first."), dtype=np.float32)
        ax_.scatter(*ref_xy[r_rows].T, s=size, c=BACKGROUND, linewidths=0, rasterized=True)
        order = q_rows[np.argsort(-conf[q_rows], kind="stable")]  # least confident on top
        sc_ = ax_.scatter(*q_xy[order].T, s=size * 1.5, c=conf[order], cmap="viridis", vmin=0, vmax=1,
                          linewidths=0, rasterized=True)
        fig.colorbar(sc_, ax=ax_, label=f"{label_key} confidence", shrink=0.8)
        what = f"query: {label_key} confidence"
    else:
        source_key = source_key or (model.setup.batch_key if model is not None else None)
        if source_key is not None and source_key in query.obs:
            src = as_strings(query.obs[source_key].to_numpy())
        else:
            src = np.full(query.n_obs, "query", dtype=object)
        cats = sorted(set(src))
        colors = category_colors(cats)
        colors_all = {"reference": BACKGROUND, **{f"query: {c}": v for c, v in colors.items()}}
        ax_.scatter(*ref_xy[r_rows].T, s=size, c=BACKGROUND, linewidths=0, rasterized=True)
        ax_.scatter(*q_xy[q_rows].T, s=size * 1.5, c=[colors[c] for c in src[q_rows]], linewidths=0, rasterized=True)
        categorical_legend(ax_, colors_all, ["reference"] + [f"query: {c}" for c in src[q_rows]])
        what = "query by source, reference in grey"
    clean_embedding_axes(ax_)
    ax_.set_title(title or what, fontsize=10)
    return finish(fig, f"mapping_umap_{color}", show, save, created=ax is None)



def label_umap(adata: ad.AnnData, label_key: str, basis: str = "X_umap", classes: list[str] | None = None,
               max_points: int | None = 100_000, seed: int = 0, title: str | None = None, ax: Axes | None = None,
               show: bool | None = None, save: SaveArg = None) -> Figure:
    """Cells on their own 2-d embedding, coloured by predicted label (unknown cells in black).

    For a query that has no place on a reference UMAP (annotated by the classifier, or mapped onto a
    model without a reference UMAP): its own UMAP, e.g. from :func:`umap_coords`.

    Parameters
    ----------
    adata
        Cells with ``obsm[basis]`` and ``obs['<label_key>_pred']``.
    label_key
        Label key whose predictions are shown.
    basis
        ``obsm`` key of the 2-d coordinates.
    classes
        Label order of the colours (default: the recorded classes, else sorted).
    max_points
        Draw at most this many cells (seeded subsample).
    seed, title, ax, show, save
        As in :func:`mapping_umap`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .outputs import label_classes

    if basis not in adata.obsm:
        raise InputError(f"The AnnData has no `obsm[{basis!r}]` (keys: {list(adata.obsm)}); pass basis=.")
    xy = np.asarray(adata.obsm[basis], dtype=np.float32)[:, :2]
    pred = predicted_labels(adata, label_key)
    cats = list(classes or label_classes(adata, label_key) or sorted(set(pred) - {UNKNOWN_LABEL}))
    cats += [c for c in sorted(set(pred)) if c not in cats and c != UNKNOWN_LABEL] + [UNKNOWN_LABEL]
    colors = category_colors(cats)
    rows = subsample(len(xy), max_points, seed)
    fig, ax_ = new_axes(ax, figsize=(6.5, 4.8))
    ax_.scatter(*xy[rows].T, s=point_size(len(rows)) * 1.5, c=[colors[c] for c in pred[rows]], linewidths=0.2,
                edgecolors="white", rasterized=True)
    categorical_legend(ax_, colors, list(pred[rows]))
    clean_embedding_axes(ax_)
    ax_.set_title(title or f"predicted {label_key}", fontsize=10)
    return finish(fig, f"label_umap_{label_key}", show, save, created=ax is None)
