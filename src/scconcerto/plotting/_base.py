"""What every plot shares: axes creation, the scanpy-style ``show``/``save`` ending, colours, point sizes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._errors import InputError
from .._random import sample_rows
from .._keys import UNKNOWN_LABEL

#: Colour of cells drawn as background (the reference, other sources).
BACKGROUND = "#d3d3d3"
#: Colour of cells called unknown (none of the reference labels).
UNKNOWN_COLOR = "#000000"

SaveArg = str | Path | bool | None


def new_axes(ax: Axes | None, figsize: tuple[float, float] = (5.0, 4.5)) -> tuple[Figure, Axes]:
    """The figure and axes to draw on: ``ax``'s own, or a new figure."""
    if ax is not None:
        return ax.figure, ax
    fig, new = plt.subplots(figsize=figsize, layout="constrained")
    return fig, new


def finish(fig: Figure, name: str, show: bool | None, save: SaveArg, created: bool) -> Figure:
    """End a plot the scanpy way: save it if asked, show it if asked, return the figure.

    Parameters
    ----------
    fig
        The figure drawn.
    name
        Plot name, used for the file name when ``save=True``.
    show
        Call :func:`matplotlib.pyplot.show`. ``None``: only for a figure this
        call created, when matplotlib is interactive.
    save
        A file path (the format follows its suffix), ``True`` for
        ``<scanpy.settings.figdir>/<name>.png``, or ``None``/``False``.
    created
        Whether the figure was created by the plotting call (not passed in via ``ax``).
    """
    if save:
        from .._io import write_atomic_file

        path = _save_path(name, save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = path.suffix.lstrip(".").lower()
        write_atomic_file(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight"),
                          overwrite=True)
    if show is None:
        show = created and matplotlib.is_interactive()
    if show:
        plt.show()
    return fig


def _save_path(name: str, save: str | Path | bool) -> Path:
    if save is True:
        import scanpy as sc

        return Path(sc.settings.figdir) / f"{name}.png"
    path = Path(save)
    if not path.suffix:
        raise InputError(f"save={str(save)!r} has no file extension; give e.g. {str(save)!r}.png or .pdf.")
    return path


def category_colors(categories: Sequence[str]) -> dict[str, str]:
    """One colour per category, in order, from scanpy's default palettes."""
    from scanpy.plotting import palettes

    n = len(categories)
    palette = palettes.default_20 if n <= 20 else palettes.default_28 if n <= 28 else palettes.default_102
    colors = {str(c): palette[i % len(palette)] for i, c in enumerate(categories)}
    if UNKNOWN_LABEL in colors:
        colors[UNKNOWN_LABEL] = UNKNOWN_COLOR
    return colors


def point_size(n_points: int) -> float:
    """Marker area for a scatter of ``n_points`` cells (scanpy's rule, capped)."""
    return float(min(30.0, max(0.5, 120_000 / max(n_points, 1))))


def subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    """Row numbers to draw: all rows, or a seeded random ``max_points`` of them (sorted)."""
    if max_points is not None and n > max_points and max_points < 1:
        raise InputError(f"max_points must be positive, got {max_points}.")
    return sample_rows(n, max_points, seed)


def clean_embedding_axes(ax: Axes, basis: str = "UMAP") -> None:
    """UMAP-style axes: no ticks, axis names only, equal aspect left free."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{basis}1")
    ax.set_ylabel(f"{basis}2")


def categorical_legend(ax: Axes, colors: dict[str, str], present: Sequence[str], max_entries: int = 40) -> None:
    """A legend of the ``present`` categories (in their ``colors`` order), outside the axes on the right."""
    shown = [c for c in colors if c in set(present)][:max_entries]
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[c], markersize=6) for c in shown]
    if handles:
        ax.legend(handles, shown, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8,
                  ncols=1 if len(shown) <= 16 else 2)


def as_strings(values: np.ndarray | Sequence) -> np.ndarray:
    """Labels as an object array of strings, missing values as ``"nan"``."""
    import pandas as pd

    s = pd.Series(np.asarray(values, dtype=object))
    return s.where(s.notna(), "nan").astype(str).to_numpy(dtype=object)
