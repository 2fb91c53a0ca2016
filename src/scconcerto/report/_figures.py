"""The report's figures, each drawn by a public plotting function and embedded as base64 PNG."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class EmbeddedFigure:
    """A rendered figure: title, caption, base64 PNG bytes, and how the page lays it out.

    ``wide`` figures take the page's full width; ``natural`` ones are shown at their own pixel size (scrolling
    sideways when wider than the page), so that their text is never shrunk.
    """

    title: str
    caption: str
    png: str
    wide: bool = False
    natural: bool = False


def figure_png(fig: "Figure", dpi: int = 110) -> str:
    """The figure as base64 PNG text; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Figures:
    """Draws figures one by one; a figure whose inputs are missing becomes a note instead."""

    def __init__(self, dpi: int):
        self.dpi = dpi
        self.notes: list[str] = []

    def draw(self, title: str, caption: str, make: Callable[[], "Figure"], wide: bool = False,
             natural: bool = False) -> EmbeddedFigure | None:
        try:
            fig = make()
        except InputError as exc:
            self.notes.append(f"{title}: {exc}")
            return None
        return EmbeddedFigure(title, caption, figure_png(fig, self.dpi), wide, natural)
