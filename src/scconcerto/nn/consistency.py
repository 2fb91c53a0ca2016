"""Consistency loss for domain adaptation on unlabeled target cells.

The prediction of the classifier under one dropout view of a cell, sharpened,
is the soft target for its prediction under another view (as in UDA /
MixMatch). The target is a constant (no gradient flows into it); the loss is
back-propagated through the second view, into the head and the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sharpen(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sharpened class distribution ``p_c^(1/T) / sum_k p_k^(1/T)`` of ``p = softmax(logits)``.

    Computed stably as ``softmax(logits / T)`` (the two are equal). ``T < 1``
    sharpens, ``T = 1`` returns the plain softmax.
    """
    if temperature <= 0:
        raise ValueError(f"sharpening temperature must be positive, got {temperature}")
    return torch.softmax(logits / temperature, dim=1)


def consistency_loss(target_view_logits: torch.Tensor, prediction_logits: torch.Tensor,
                     temperature: float = 0.5, min_confidence: float = 0.0) -> torch.Tensor:
    """Cross-entropy of one view's predictions against the sharpened, detached predictions of another.

    Parameters
    ----------
    target_view_logits
        ``(n, C)`` logits of the view that makes the soft targets (detached here).
    prediction_logits
        ``(n, C)`` logits of the view that is trained to match them.
    temperature
        Sharpening temperature of the targets.
    min_confidence
        Cells whose target-view maximum probability (before sharpening) is below
        this do not contribute (0: every cell does).

    Returns
    -------
    torch.Tensor
        Scalar mean over the contributing cells (0 when none contributes).
    """
    with torch.no_grad():
        soft = sharpen(target_view_logits.detach(), temperature)
        keep = torch.softmax(target_view_logits.detach(), dim=1).amax(dim=1) >= min_confidence
    per_cell = -(soft * F.log_softmax(prediction_logits, dim=1)).sum(dim=1)
    weights = keep.to(per_cell.dtype)
    return (per_cell * weights).sum() / weights.sum().clamp_min(1.0)
