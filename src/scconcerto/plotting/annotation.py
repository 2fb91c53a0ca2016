"""How predicted labels compare with given ones and how sure they are: confusion matrix, Sankey of label transfer
(or of coarse to fine levels), confidence histogram, confidence per predicted type."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch, Rectangle
from matplotlib.path import Path as MplPath

from .._errors import InputError
from .._keys import UNKNOWN_LABEL, confidence_key, pred_key, unknown_key
from ._base import SaveArg, as_strings, category_colors, finish, new_axes
from .outputs import predicted_labels, require_obs, unknown_score_column, unknown_score_name, unknown_threshold

#: Smallest font of a confusion matrix's numbers and labels (points at the figure's size): at the report's
#: 110 dpi, shown at its natural size, 8 pt is about 9 pt on screen.
MIN_MATRIX_FONT = 8.0


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


def matrix_font(n_classes: int, digits: int = 4) -> tuple[float, float]:
    """Font size (points) of a confusion matrix's numbers and the side of its cells (inches) that holds them.

    The font shrinks from 11 pt as classes are added, never below ``MIN_MATRIX_FONT``; a cell is wide enough
    for ``digits`` characters at that size.
    """
    font = float(np.clip(12.0 - 0.25 * n_classes, MIN_MATRIX_FONT, 11.0))
    return font, max(0.42, (digits * 0.62 + 0.8) * font / 72)


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
        Write the values in the cells (default: when the table is at most 40 x 40). The font shrinks as
        classes are added, down to ``MIN_MATRIX_FONT``, and the cells grow to hold their numbers.
    ax, show, save
        As in scanpy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    given, pred, rows, cols = _given_and_predicted(adata, label_key, true_key, mark_unknown)
    table = confusion_table(given, pred, normalize, rows, cols)
    values = table.to_numpy(dtype=float)
    font, cell = matrix_font(max(len(rows), len(cols)), digits=4 if normalize else len(str(int(values.max(initial=0)))))
    fig, ax_ = new_axes(ax, figsize=(1.5 + cell * len(cols) + 2.0, 1.0 + cell * len(rows) + 1.5))
    image = ax_.imshow(values, cmap="Blues", aspect="auto", vmin=0, vmax=1 if normalize else None,
                       interpolation="nearest")
    ax_.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=font)
    ax_.set_yticks(range(len(rows)), rows, fontsize=font)
    ax_.set_xlabel(f"predicted {label_key}", fontsize=font + 1)
    ax_.set_ylabel(f"given {true_key or label_key}", fontsize=font + 1)
    if annotate if annotate is not None else (len(rows) <= 40 and len(cols) <= 40):
        top = values.max() if values.size else 1.0
        for (i, j), v in np.ndenumerate(values):
            if v > 0:
                ax_.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=font,
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


def _alluvial(counts: np.ndarray, rows: list[str], cols: list[str], left: str, right: str, title: str, gap: float,
              ax: Axes | None) -> tuple[Figure, Axes]:
    """Blocks of ``rows`` (left) and ``cols`` (right), bands of ``counts[i, j]`` cells between them."""
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
    for i, j in zip(*np.nonzero(counts)):  # one band per (left, right) pair, not per cell
        y0_top = left_top[i] - left_off[i, j] * unit_l[i]
        y1_top = right_top[j] - right_off[i, j] * unit_r[j]
        band = _ribbon(bar, 1 - bar, (y0_top, y0_top - counts[i, j] * unit_l[i]),
                       (y1_top, y1_top - counts[i, j] * unit_r[j]))
        ax_.add_patch(PathPatch(band, facecolor=colors[rows[i]], edgecolor="none", alpha=0.55))
    for tops, heights, names, x, side in ((left_top, left_h, rows, 0.0, "left"),
                                          (right_top, right_h, cols, 1 - bar, "right")):
        totals = counts.sum(axis=1) if side == "left" else counts.sum(axis=0)
        label_y = _spread(tops - heights / 2, label_gap)  # small blocks' labels must not overlap
        for top, h, name, total, y in zip(tops, heights, names, totals, label_y):
            ax_.add_patch(Rectangle((x, top - h), bar, h, facecolor=colors[name], edgecolor="none"))
            tx = -0.01 if side == "left" else 1.01
            ax_.text(tx, y, f"{name} ({int(total)})", ha="right" if side == "left" else "left",
                     va="center", fontsize=7)
    ax_.set_xlim(-0.35, 1.35)
    ax_.set_ylim(-0.02, 1.02)
    ax_.axis("off")
    ax_.text(bar / 2, 1.04, left, ha="center", va="bottom", fontsize=8, weight="bold")
    ax_.text(1 - bar / 2, 1.04, right, ha="center", va="bottom", fontsize=8, weight="bold")
    ax_.set_title(title, fontsize=10, pad=18)
    return fig, ax_


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
    fig, _ = _alluvial(counts, rows, cols, f"given {true_key or label_key}", f"predicted {label_key}",
                       f"label transfer of {int(counts.sum())} cells", gap, ax)
    return finish(fig, f"sankey_{label_key}", show, save, created=ax is None)


def level_sankey(adata: ad.AnnData, coarse_key: str, fine_key: str, gap: float = 0.01, ax: Axes | None = None,
                 show: bool | None = None, save: SaveArg = None) -> Figure:
    """Alluvial plot of a hierarchical mapping: each cell's predicted coarse label flows to its predicted fine one.

    Parameters
    ----------
    adata
        Query mapped with ``levels=[coarse_key, fine_key]`` (``obs['<key>_pred']`` for both keys).
    coarse_key, fine_key
        The two label keys, coarse first.
    gap, ax, show, save
        As in :func:`sankey`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    coarse = predicted_labels(adata, coarse_key, mark_unknown=False)
    fine = predicted_labels(adata, fine_key, mark_unknown=False)
    counts = confusion_table(coarse, fine, False)
    counts = counts.iloc[np.argsort(-counts.to_numpy().sum(axis=1), kind="stable")]  # the largest coarse label on top
    # fine labels grouped under the coarse label most of their cells have, so that bands do not cross
    parent = counts.to_numpy().argmax(axis=0)
    counts = counts.iloc[:, np.lexsort((-counts.to_numpy().sum(axis=0), parent))]
    fig, _ = _alluvial(counts.to_numpy(dtype=float), list(counts.index), list(counts.columns),
                       f"predicted {coarse_key}", f"predicted {fine_key}",
                       f"{coarse_key} to {fine_key} of {adata.n_obs} cells", gap, ax)
    return finish(fig, f"levels_{coarse_key}_{fine_key}", show, save, created=ax is None)


def confidence_histogram(adata: ad.AnnData, label_key: str, threshold: float | None = None,
                         true_key: str | None = None, bins: int = 20, score: str = "confidence",
                         classes: Sequence[str] | None = None, ax: Axes | None = None, show: bool | None = None,
                         save: SaveArg = None) -> Figure:
    """Histogram of the per-cell confidence, or of the score that flags unknown cells with its threshold.

    Parameters
    ----------
    adata
        Mapped (or annotated) query with ``obs['<label_key>_confidence']``.
    label_key
        Reference label key.
    threshold
        Value of the histogram's score below which cells are unknown (default: the recorded threshold, drawn
        only with ``score="unknown"``, the score it applies to).
    true_key
        ``obs`` column of given labels (default: ``label_key`` if the query has it). With ``"confidence"`` the
        bars are split into right and wrong predictions; with ``"unknown"`` into cells whose given type the
        reference has (``classes``) and cells of other types.
    bins
        Number of bins over ``[0, 1]``.
    score
        ``"confidence"`` (probability that the label is right) or ``"unknown"`` (the score behind
        ``obs['<label_key>_unknown']``: the probability of a known type after mapping).
    classes
        Labels the reference has (default: the recorded classes); splits the ``"unknown"`` bars.
    ax, show, save
        As in scanpy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .outputs import label_classes

    if score not in ("confidence", "unknown"):
        raise InputError(f"score must be 'confidence' or 'unknown', got {score!r}.")
    if score == "confidence":
        column, name = confidence_key(label_key), "confidence of the predicted label"
    else:
        column, name = unknown_score_column(adata, label_key), unknown_score_name(adata, label_key)
        if column is None:
            raise InputError(f"The query has no score behind `obs['{unknown_key(label_key)}']` (no "
                             f"`<label>_known_prob` or `<label>_unknown_score` column). Map it again.")
        if threshold is None:
            threshold = unknown_threshold(adata, label_key)
    values = np.asarray(require_obs(adata, column, "Map the query first."), dtype=float)
    fig, ax_ = new_axes(ax, figsize=(5.5, 3.6))
    low = min(0.0, float(np.nanmin(values))) if values.size else 0.0
    high = max(1.0, float(np.nanmax(values))) if values.size else 1.0
    edges = np.linspace(low, high, bins + 1)
    true_key = true_key or (label_key if label_key in adata.obs else None)
    if true_key is not None and true_key in adata.obs and pred_key(label_key) in adata.obs:
        given = as_strings(adata.obs[true_key].to_numpy())
        labeled = given != "nan"
        if score == "confidence":
            first = as_strings(adata.obs[pred_key(label_key)].to_numpy()) == given
            names = ["prediction = given label", "prediction ≠ given label"]
        else:
            first = np.isin(given, list(classes or label_classes(adata, label_key) or []))
            names = ["given type in the reference", "given type not in the reference"]
        ax_.hist([values[labeled & first], values[labeled & ~first]], bins=edges, stacked=True,
                 color=["#4c72b0", "#dd8452"], label=names)
        ax_.legend(fontsize=8, loc="upper left", frameon=False)
    else:
        ax_.hist(values, bins=edges, color="#4c72b0")
    if unknown_key(label_key) in adata.obs:
        n_unknown = int(adata.obs[unknown_key(label_key)].to_numpy(dtype=bool).sum())
    elif threshold is not None:
        n_unknown = int((values < threshold).sum())
    else:
        n_unknown = None
    if threshold is not None:
        ax_.axvline(threshold, color="black", linestyle="--", linewidth=1)
        ax_.text(threshold, ax_.get_ylim()[1] * 0.97, f" threshold {threshold:.2f}", va="top", fontsize=8)
    title = f"{label_key}: {name} of {len(values)} cells"
    if n_unknown is not None:
        title += f"; unknown: {n_unknown} ({n_unknown / max(len(values), 1):.1%})"
    ax_.set_title(title, fontsize=10)
    ax_.set_xlim(low, high)
    ax_.set_xlabel(name)
    ax_.set_ylabel("cells")
    return finish(fig, f"{score}_{label_key}", show, save, created=ax is None)


def type_order(adata: ad.AnnData, label_key: str) -> list[str]:
    """Predicted labels, most frequent first (``unknown``, from ``reject=True``, last)."""
    pred = pd.Series(predicted_labels(adata, label_key, mark_unknown=False))
    counts = pred.value_counts(sort=False)
    ranked = sorted(counts.index, key=lambda c: (c == UNKNOWN_LABEL, -counts[c], str(c)))
    return [str(c) for c in ranked]


def confidence_by_type(adata: ad.AnnData, label_key: str, unknown_score: bool = True,
                       order: Sequence[str] | None = None,
                       max_types: int = 40, max_points: int = 300, seed: int = 0,
                       ax: Axes | Sequence[Axes] | None = None, show: bool | None = None,
                       save: SaveArg = None) -> Figure:
    """Box plots of the confidence per predicted type, each cell drawn as a dot over its box.

    With ``unknown_score``, a second panel shows the score that flags unknown cells (mapping: the
    probability that the cell's type is one the reference has), with its threshold dashed.

    Parameters
    ----------
    adata
        Mapped (or annotated) query with ``obs['<label_key>_pred']`` and ``obs['<label_key>_confidence']``.
    label_key
        Label key whose predictions are shown.
    unknown_score
        Add the panel of the unknown score (when the query has one).
    order
        Types from top to bottom (default: most cells first).
    max_types
        Show at most this many types (the most frequent).
    max_points
        Dots drawn per type at most (seeded subsample); the boxes use every cell.
    seed
        Seed of the dots' subsample and jitter.
    ax
        One axes per panel (a sequence for two panels), or ``None`` for a new figure.
    show, save
        As in scanpy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    pred = predicted_labels(adata, label_key, mark_unknown=False)
    types = list(order or type_order(adata, label_key))[:max_types]
    panels = [(confidence_key(label_key), "confidence of the predicted label", None)]
    column = unknown_score_column(adata, label_key) if unknown_score else None
    if column is not None:
        panels.append((column, unknown_score_name(adata, label_key), unknown_threshold(adata, label_key)))
    if ax is None:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, 0.9 + 0.34 * max(len(types), 2)),
                                 sharey=True, squeeze=False, layout="constrained")
        axes = list(axes[0])
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) != len(panels):
            raise InputError(f"confidence_by_type draws {len(panels)} panel(s); got {len(axes)} axes.")
        fig = axes[0].figure
    rng = np.random.default_rng(seed)
    groups = pd.Series(np.arange(len(pred))).groupby(pred).indices
    counts = {t: len(groups.get(t, ())) for t in types}
    positions = np.arange(len(types))[::-1]  # the first type on top
    for ax_, (col, name, threshold) in zip(axes, panels):
        values = np.asarray(require_obs(adata, col, "Map the query first."), dtype=float)
        data = [values[groups[t]] if t in groups else np.array([np.nan]) for t in types]
        ax_.boxplot(data, positions=positions, orientation="horizontal", widths=0.6, showfliers=False,
                    patch_artist=True, boxprops={"facecolor": "#dfe8f3", "edgecolor": "#4c72b0"},
                    medianprops={"color": "#1f3a5f", "linewidth": 1.5}, whiskerprops={"color": "#4c72b0"},
                    capprops={"color": "#4c72b0"})
        for y, v in zip(positions, data):  # a loop over types, not cells
            shown = v if len(v) <= max_points else rng.choice(v, size=max_points, replace=False)
            ax_.scatter(shown, y + rng.uniform(-0.22, 0.22, size=len(shown)), s=5, color="#dd8452", alpha=0.6,
                        linewidths=0, zorder=3)
        if threshold is not None:
            ax_.axvline(threshold, color="black", linestyle="--", linewidth=1)
            ax_.text(threshold, len(types) - 0.45, f" threshold {threshold:.2f}", fontsize=8, va="bottom")
        ax_.set_xlim(min(0.0, float(np.nanmin(values, initial=0.0))) - 0.02,
                     max(1.0, float(np.nanmax(values, initial=1.0))) + 0.02)
        ax_.set_ylim(-0.7, len(types) - 0.3)
        ax_.set_xlabel(name)
        ax_.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, [f"{t} ({counts[t]:,})" for t in types], fontsize=9)
    axes[0].set_title(f"{label_key}: per predicted type (cells)", fontsize=10, loc="left")
    return finish(fig, f"confidence_by_type_{label_key}", show, save, created=ax is None)
