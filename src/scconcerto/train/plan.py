"""Lightning training plan for contrastive teacher-student pre-training, and its data loader."""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch

from .._ragged import CellBatch
from ..data.cells import CellMatrix
from ..data.sampling import SourceBatchSampler
from ..nn import ConcertoNetwork, nt_xent
from .config import TrainConfig


class CellBatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole mini-batches (index = list of rows)."""

    def __init__(self, cells: CellMatrix, max_genes: int | None, seed: int, gene_dropout: float = 0.0):
        self.cells = cells
        self.max_genes = max_genes
        self.seed = seed
        self.gene_dropout = gene_dropout

    def __len__(self) -> int:
        return self.cells.n_cells

    def __getitem__(self, rows: list[int]) -> CellBatch:
        rows_arr = np.asarray(rows, dtype=np.int64)
        rng = np.random.default_rng([self.seed, *rows_arr[:4].tolist(), len(rows_arr)])
        return self.cells.batch(rows_arr, self.max_genes, rng, self.gene_dropout)


def _unbatched(item: CellBatch) -> CellBatch:
    return item


def training_loader(cells: CellMatrix, config: TrainConfig, num_replicas: int = 1, rank: int = 0
                    ) -> torch.utils.data.DataLoader:
    """Source-homogeneous, shuffled mini-batches with teacher gene subsampling."""
    sampler = SourceBatchSampler(cells.domains, config.batch_size, shuffle=True, seed=config.seed,
                                 num_replicas=num_replicas, rank=rank)
    return torch.utils.data.DataLoader(CellBatchDataset(cells, config.max_genes, config.seed, config.gene_dropout), sampler=sampler,
                                       batch_size=None, collate_fn=_unbatched, num_workers=config.num_workers,
                                       persistent_workers=config.num_workers > 0)


class ContrastivePlan(L.LightningModule):
    """Trains teacher and student jointly with symmetric NT-Xent.

    Adam with a linear decay from ``lr`` to ``lr * lr_end_factor`` over all steps
    (one optimizer step per iteration).
    """

    def __init__(self, network: ConcertoNetwork, config: TrainConfig, total_steps: int):
        super().__init__()
        self.network = network
        self.config = config
        self.total_steps = max(total_steps, 1)
        self.epoch_history: list[dict] = []
        self._epoch_losses: list[float] = []
        self._epoch_start = 0.0

    def training_step(self, batch: CellBatch, batch_idx: int) -> torch.Tensor:
        z_teacher, z_student = self.network(batch)
        loss = nt_xent(z_teacher, z_student, self.config.temperature)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch.n_cells)
        self._epoch_losses.append(float(loss.detach()))
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_losses = []
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        mean = float(np.mean(self._epoch_losses)) if self._epoch_losses else float("nan")
        self.epoch_history.append({"epoch": int(self.current_epoch), "loss": mean,
                                   "seconds": time.perf_counter() - self._epoch_start})
        self.log("epoch_loss", mean, prog_bar=True, sync_dist=True)

    def transfer_batch_to_device(self, batch: CellBatch, device: torch.device, dataloader_idx: int) -> CellBatch:
        return batch.to(device)

    def configure_optimizers(self):  # noqa: ANN201 - Lightning signature
        opt = torch.optim.Adam(self.network.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        end = self.config.lr_end_factor
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 1.0 - (1.0 - end) * min(step, self.total_steps) / self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["epoch_history"] = self.epoch_history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.epoch_history = list(checkpoint.get("epoch_history", []))
