"""The training loss curve from a model's per-epoch history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._errors import InputError
from ._base import SaveArg, finish, new_axes

if TYPE_CHECKING:
    from ..model import Concerto


def loss_curve(model: "Concerto | Sequence[dict]", ax: Axes | None = None, show: bool | None = None,
               save: SaveArg = None) -> Figure:
    """Contrastive (NT-Xent) loss per epoch.

    Parameters
    ----------
    model
        A trained model, or its ``history`` (a list of ``{"epoch", "loss", "seconds"}`` dicts).
    ax, show, save
        As in scanpy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    history = list(getattr(model, "history", model) or [])
    points = [(h.get("epoch", i), h["loss"]) for i, h in enumerate(history) if isinstance(h, dict) and "loss" in h]
    if not points:
        raise InputError("The model has no training history (it is untrained, or was saved without it).")
    epochs, losses = np.asarray(points, dtype=float).T
    epochs = epochs + 1  # epochs counted from 1 on the axis
    fig, ax_ = new_axes(ax, figsize=(5.0, 3.4))
    ax_.plot(epochs, losses, marker="o", markersize=3, linewidth=1.2, color="#4c72b0")
    seconds = sum(float(h.get("seconds", 0.0)) for h in history if isinstance(h, dict))
    ax_.set_xlabel("epoch")
    ax_.set_ylabel("NT-Xent loss")
    title = f"training loss: {losses[0]:.3f} → {losses[-1]:.3f} in {len(losses)} epochs"
    if seconds > 0:
        title += f" ({seconds:.0f} s)"
    ax_.set_title(title, fontsize=10)
    ax_.grid(alpha=0.3)
    return finish(fig, "loss_curve", show, save, created=ax is None)
