"""The HTML mapping report: one self-contained file a person opens in a browser."""

from .html import EmbeddedFigure, figure_png, mapping_report

__all__ = ["EmbeddedFigure", "figure_png", "mapping_report"]
