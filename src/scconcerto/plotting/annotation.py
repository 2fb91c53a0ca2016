"""How predicted labels compare with given ones: confusion matrix, Sankey of label transfer, confidence histogram."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch, Rectangle
from matplotlib.path import Path as MplPath

from .._errors import InputError
from .._keys import UNKNOWN_LABEL
from ._base import SaveArg, as_strings, category_colors, finish, new_axes
from .._keys import confidence_key, pred_key, unknown_key
from ._mapped import predicted_labels, require_obs, unknown_threshold


def _ordered(values: np.ndarray, preferred: list[str] | None = None) -> list[str]:
    present = set(values)
    head = [c for c in (preferred or []) if c in present]
    tail = sorted(present - set(head) - {UNKNOWN_LABEL})
    return head + tail + ([UNKNOWN_LABEL] if UNKNOWN_LABEL in present else [])


def _given_and_predicted(adata: ad.AnnData, label_key: str, true_key: str | None,
                         mark_unknown: bool) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    true_key = true_key or label_key
    col = adata.obs[true_key] if true_key in adata.obs else None
    given = as_strings(require_obs(adata, true_key, "The query has no given labels to compare with; name them with "
                                   "true_key=."))
    pred = predicted_labels(adata, label_key, mark_unknown)
    keep = given != "nan"
    if not keep.any():
        raise InputError(f"`obs[{true_key!r}]` holds no labels (all missing).")
    given, pred = given[keep], pred[keep]
    cats = [str(c) for c in col.cat.categories] if isinstance(col.dtype, pd.CategoricalDtype) else None
    rows = _ordered(given, cats)
    cols = _ordered(pred, rows)
    return given, pred, rows, cols


def confusion_table(given: np.ndarray, predicted: np.ndarray, normalize: bool = False,
                    rows: list[str] | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """Cell counts (or row fractions) of given (rows) against predicted (columns) labels.

    Parameters
    ----------
    given, predicted
        One label per cell.
    normalize
        Divide each row by its total (fraction of each given label sent to each prediction).
    rows, columns
        Row and column order (default: sorted labels, ``unknown`` last).
    """
    given, predicted = as_strings(given), as_strings(predicted)
    if len(given) != len(predicted):
        raise InputError(f"given and predicted have different lengths ({len(given)}, {len(predicted)}).")
    rows = rows or _ordered(given)
    columns = columns or _ordered(predicted, rows)
    r = pd.Categorical(given, categories=rows).codes
    c = pd.Categorical(predicted, categories=columns).codes
    ok = (r >= 0) & (c >= 0)
    counts = np.zeros((len(rows), len(columns)), dtype=np.int64)
    np.add.at(counts, (r[ok], c[ok]), 1)
    table = pd.DataFrame(counts, index=pd.Index(rows, name="given"), columns=pd.Index(columns, name="predicted"))
    if normalize:
        totals = table.sum(axis=1).replace(0, 1)
        table = table.div(totals, axis=0)
    return table


def confusion_matrix(adata: ad.AnnData, label_key: str, true_key: str | None = None, normalize: bool = True,
                     mark_unknown: bool = True, annotate: bool | None = None, ax: Axes | None = None,
                     show: bool | None = None, save: SaveArg = None) -> Figure:
    """Heatmap of given labels (rows) against predicted labels (columns).

    Parameters
    ----------
    adata
        Mapped query with ``obs['<label_key>_pred']`` and its given labels.
    label_key
        Reference label key whose predictions are shown.
    true_key
        ``obs`` column of the given labels (default: ``label_key``).
    normalize
        Colour by the fraction of each given label (rows sum to 1); else by counts.
    mark_unknown
        Show cells flagged in ``obs['<label_key>_unknown']`` as a separate ``unknown`` column.
    annotate
        Write the values in the cells (default: when the table is at most 20 x 20).
    ax, show, save
        As in scanpy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    given, pred, rows, cols = _given_and_predicted(adata, label_key, true_key, mark_unknown)
    table = confusion_table(given, pred, normalize, rows, cols)
    fig, ax_ = new_axes(ax, figsize=(1.2 + 0.45 * len(cols) + 2.0, 1.0 + 0.4 * len(rows) + 1.2))
    values = table.to_numpy(dtype=float)
    image = ax_.imshow(values, cmap="Blues", aspect="auto", vmin=0, vmax=1 if normalize else None,
                       interpolation="nearest")
    ax_.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax_.set_yticks(range(len(rows)), rows, fontsize=8)
    ax_.set_xlabel(f"predicted {label_key}")
    ax_.set_ylabel(f"given {true_key or label_key}")
    if annotate if annotate is not None else (len(rows) <= 20 and len(cols) <= 20):
        top = values.max() if values.size else 1.0
        for (i, j), v in np.ndenumerate(values):
            if v > 0:
                ax_.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=6,
                         color="white" if v > 0.6 * top else "black")
    fig.colorbar(image, ax=ax_, label="fraction of given label" if normalize else "cells", shrink=0.8)
    ax_.set_title(f"{label_key}: given vs predicted", fontsize=10)
    return finish(fig, f"confusion_{label_key}", show, save, created=ax is None)


def _ribbon(x0: float, x1: float, y0: tuple[float, float], y1: tuple[float, float]) -> MplPath:
    """A band from ``y0=(top, bottom)`` at ``x0`` to ``y1`` at ``x1`` with S-shaped (cubic) edges."""
    xm = (x0 + x1) / 2
    verts = [(x0, y0[0]), (xm, y0[0]), (xm, y1[0]), (x1, y1[0]), (x1, y1[1]),
             (xm, y1[1]), (xm, y0[1]), (x0, y0[1]), (x0, y0[0])]
    codes = [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4, MplPath.LINETO,
             MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4, MplPath.CLOSEPOLY]
    return MplPath(verts, codes)


def _stack(totals: np.ndarray, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Top y and height of each block, stacked downward from 1 with ``gap`` between blocks."""
    heights = totals / max(totals.sum(), 1)
    scale = (1.0 - gap * (len(totals) - 1)) if len(totals) > 1 else 1.0
    tops = 1.0 - np.concatenate([[0.0], np.cumsum(heights * scale + gap)[:-1]])
    return tops, heights * scale


def _spread(centers: np.ndarray, min_gap: float, bottom: float = -0.02) -> np.ndarray:
    """Label heights near ``centers`` (top to bottom) at least ``min_gap`` apart, not below ``bottom``."""
    out = np.asarray(centers, dtype=float).copy()
    for i in range(1, len(out)):  # a loop over labels, not cells
        out[i] = min(out[i], out[i - 1] - min_gap)
    if len(out) and out[-1] < bottom:
        out[-1] = bottom
        for i in range(len(out) - 2, -1, -1):
            out[i] = max(out[i], out[i + 1] + min_gap)
    return out


def sankey(adata: ad.AnnData, label_key: str, true_key: str | None = None, mark_unknown: bool = True,
           gap: float = 0.01, ax: Axes | None = None, show: bool | None = None, save: SaveArg = None) -> Figure:
    """Alluvial (Sankey) plot of label transfer: given labels on the left flow to predicted labels on the right.

    Band widths are cell counts; bands take the colour of the given label
    (as in Fig. 2i of Yang et al., 2022).

    Parameters
    ----------
    adata
        Mapped query with ``obs['<label_key>_pred']`` and its given labels.
    label_key
        Reference label key whose predictions are shown.
    true_key
        ``obs`` column of the given labels (default: ``label_key``).
    mark_unknown
        Send cells flagged in ``obs['<label_key>_unknown']`` to an ``unknown`` block.
    gap
        Vertical gap between blocks (fraction of the height).
    ax, show, save
        As in scanpy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    given, pred, rows, cols = _given_and_predicted(adata, label_key, true_key, mark_unknown)
    counts = confusion_table(given, pred, False, rows, cols).to_numpy(dtype=float)
    n = counts.sum()
    left_top, left_h = _stack(counts.sum(axis=1), gap)
    right_top, right_h = _stack(counts.sum(axis=0), gap)
    unit_l = np.divide(left_h, counts.sum(axis=1), out=np.zeros_like(left_h), where=counts.sum(axis=1) > 0)
    unit_r = np.divide(right_h, counts.sum(axis=0), out=np.zeros_like(right_h), where=counts.sum(axis=0) > 0)
    # offset of each band inside its left block (ordered by column) and its right block (ordered by row)
    left_off = np.cumsum(counts, axis=1) - counts
    right_off = np.cumsum(counts, axis=0) - counts
    colors = category_colors(rows + [c for c in cols if c not in rows])  # a name keeps its colour on both sides
    fig, ax_ = new_axes(ax, figsize=(7.0, max(4.0, 0.3 * max(len(rows), len(cols)) + 1.5)))
    label_gap = 9.5 / 72 / (ax_.get_position().height * fig.get_figheight())  # a 7-pt text line, in y units
    bar = 0.04
    for i, j in zip(*np.nonzero(counts)):  # one band per (given, predicted) pair, not per cell
        y0_top = left_top[i] - left_off[i, j] * unit_l[i]
        y1_top = right_top[j] - right_off[i, j] * unit_r[j]
        band = _ribbon(bar, 1 - bar, (y0_top, y0_top - counts[i, j] * unit_l[i]),
                       (y1_top, y1_top - counts[i, j] * unit_r[j]))
        ax_.add_patch(PathPatch(band, facecolor=colors[rows[i]], edgecolor="none", alpha=0.55))
    for tops, heights, names, x, pal, side in ((left_top, left_h, rows, 0.0, colors, "left"),
                                                (right_top, right_h, cols, 1 - bar, colors, "right")):
        totals = counts.sum(axis=1) if side == "left" else counts.sum(axis=0)
        label_y = _spread(tops - heights / 2, label_gap)  # small blocks' labels must not overlap
        for top, h, name, total, y in zip(tops, heights, names, totals, label_y):
            ax_.add_patch(Rectangle((x, top - h), bar, h, facecolor=pal[name], edgecolor="none"))
            tx = -0.01 if side == "left" else 1.01
            ax_.text(tx, y, f"{name} ({int(total)})", ha="right" if side == "left" else "left",
                     va="center", fontsize=7)
    ax_.set_xlim(-0.35, 1.35)
    ax_.set_ylim(-0.02, 1.02)
    ax_.axis("off")
    ax_.text(bar / 2, 1.04, f"given {true_key or label_key}", ha="center", va="bottom", fontsize=8, weight="bold")
    ax_.text(1 - bar / 2, 1.04, f"predicted {label_key}", ha="center", va="bottom", fontsize=8, weight="bold")
    ax_.set_title(f"label transfer of {int(n)} cells", fontsize=10, pad=18)
    return finish(fig, f"sankey_{label_key}", show, save, created=ax is None)


def confidence_histogram(adata: ad.AnnData, label_key: str, threshold: float | None = None,
                         true_key: str | None = None, bins: int = 20, ax: Axes | None = None,
                         show: bool | None = None, save: SaveArg = None) -> Figure:
    """Histogram of the per-cell label-transfer confidence, with the unknown threshold.

    When the query has given labels, the bars are split into cells whose
    prediction is right and wrong (a good threshold removes mostly wrong ones).

    Parameters
    ----------
    adata
        Mapped query with ``obs['<label_key>_confidence']``.
    label_key
        Reference label key.
    threshold
        Confidence below which cells are unknown (default: recorded by mapping in
        ``uns['scconcerto_mapping']``; none drawn if absent).
    true_key
        ``obs`` column of given labels (default: ``label_key`` if the query has it).
    bins
        Number of bins over ``[0, 1]``.
    ax, show, save
        As in scanpy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    conf = np.asarray(require_obs(adata, confidence_key(label_key), "Map the query first."), dtype=float)
    threshold = threshold if threshold is not None else unknown_threshold(adata, label_key)
    fig, ax_ = new_axes(ax, figsize=(5.5, 3.6))
    edges = np.linspace(0, 1, bins + 1)
    true_key = true_key or (label_key if label_key in adata.obs else None)
    if true_key is not None and true_key in adata.obs and pred_key(label_key) in adata.obs:
        given = as_strings(adata.obs[true_key].to_numpy())
        right = as_strings(adata.obs[pred_key(label_key)].to_numpy()) == given
        labeled = given != "nan"
        ax_.hist([conf[labeled & right], conf[labeled & ~right]], bins=edges, stacked=True,
                 color=["#4c72b0", "#dd8452"], label=["prediction = given label", "prediction ≠ given label"])
        ax_.legend(fontsize=8, loc="upper left", frameon=False)
    else:
        ax_.hist(conf, bins=edges, color="#4c72b0")
    if unknown_key(label_key) in adata.obs:
        n_unknown = int(adata.obs[unknown_key(label_key)].to_numpy(dtype=bool).sum())
    elif threshold is not None:
        n_unknown = int((conf < threshold).sum())
    else:
        n_unknown = None
    if threshold is not None:
        ax_.axvline(threshold, color="black", linestyle="--", linewidth=1)
        ax_.text(threshold, ax_.get_ylim()[1] * 0.97, f" threshold {threshold:.2f}", va="top", fontsize=8)
    title = f"{label_key} confidence of {len(conf)} cells"
    if n_unknown is not None:
        title += f"; unknown: {n_unknown} ({n_unknown / max(len(conf), 1):.1%})"
    ax_.set_title(title, fontsize=10)
    ax_.set_xlim(0, 1)
    ax_.set_xlabel("confidence of the predicted label")
    ax_.set_ylabel("cells")
    return finish(fig, f"confidence_{label_key}", show, save, created=ax is None)
