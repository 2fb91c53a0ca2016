"""Contrastive losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric NT-Xent (SimCLR) loss between two views of the same ``N`` cells.

    The 2N points are L2-normalized; for each point its other view is the
    positive and the remaining 2N - 2 points (both views of the other cells) are
    negatives; self-similarity is excluded. The loss is averaged over all 2N
    anchors, i.e. ``1/(2N) sum_j [l(j, j+) + l(j+, j)]``.
    """
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]), dim=1, eps=1e-8)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)


def prototype_cross_entropy(z: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                            temperature: float = 0.1) -> torch.Tensor:
    """Cross-entropy of cells against one direction per label (cosine logits divided by ``temperature``).

    Cells whose label is ``-1`` are left out; with none labeled the loss is a zero that keeps the graph (of the
    cells and of the prototypes, as data-parallel training needs every parameter in every step).
    """
    keep = labels >= 0
    if not bool(keep.any()):
        return (z.sum() + prototypes.sum()) * 0.0
    logits = F.normalize(z[keep], dim=1, eps=1e-8) @ F.normalize(prototypes, dim=1, eps=1e-8).T / temperature
    return F.cross_entropy(logits, labels[keep])
