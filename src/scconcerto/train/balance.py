"""Re-estimating the balancing groups from the embedding being trained (unlabelled references)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import lightning as L
import numpy as np
import torch

from ..data.cells import CellMatrix
from ..data.composition import balance_groups, source_balance_weights


class RefreshBalance(L.Callback):
    """At the end of epoch ``at_epoch``, cluster the cells in the current embedding and balance by those clusters.

    Clusters of the expression space (or none, for a reference on disk) start the training; half-way, the
    teacher's own embedding, whose sources are already aligned by their batch normalization, groups the
    cells across sources better, and the rest of the training balances each source by those groups
    (:func:`~scconcerto.data.composition.balance_groups` on the embedding, pooled across sources). The
    groups are passed to ``on_groups`` (kept with the model for query sources).
    """

    def __init__(self, cells: CellMatrix, at_epoch: int, seed: int, on_groups: Callable[[np.ndarray], None],
                 batch_size: int = 1024):
        self.cells = cells
        self.at_epoch = int(at_epoch)
        self.seed = seed
        self.on_groups = on_groups
        self.batch_size = batch_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.at_epoch:
            return
        from .runner import embed_cells

        net = copy.deepcopy(pl_module.network).cpu()  # embedding a copy leaves the trained network where it is
        emb = embed_cells(net, self.cells, batch_size=self.batch_size, device=pl_module.device.type)
        groups = balance_groups(emb, self.cells.domains, rounds=0, seed=self.seed)
        weights = source_balance_weights(groups, self.cells.domains)
        pl_module._balance_weights = torch.from_numpy(weights)
        self.on_groups(groups)
