"""Lightning training plan for contrastive teacher-student pre-training, and its data loaders."""

from __future__ import annotations

import os
import time

import lightning as L
import numpy as np
import torch

from .._hardware import available_cpus, resolve_device
from .._ragged import CellBatch
from ..data.backed import is_backed_csr
from ..data.cells import CellMatrix
from ..data.sampling import SourceBatchSampler
from ..data.streaming import DEFAULT_CHUNK_SIZE, DEFAULT_WINDOW_CHUNKS, StreamingBatches
from ..nn import ConcertoNetwork, nt_xent
from ..nn.losses import prototype_cross_entropy
from ..nn.dsbn import weighted_moments
from ..nn.attention import fused_available, get_attention_backend
from .config import TrainConfig


class CellBatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole mini-batches (index = list of rows)."""

    def __init__(self, cells: CellMatrix, max_genes: int | None, seed: int, gene_dropout: float = 0.0,
                 modality_dropout: float = 0.0):
        self.cells = cells
        self.max_genes = max_genes
        self.seed = seed
        self.gene_dropout = gene_dropout
        self.modality_dropout = modality_dropout

    def __len__(self) -> int:
        return self.cells.n_cells

    def __getitem__(self, rows: list[int]) -> CellBatch:
        rows_arr = np.asarray(rows, dtype=np.int64)
        rng = np.random.default_rng([self.seed, *rows_arr[:4].tolist(), len(rows_arr)])
        return self.cells.batch(rows_arr, self.max_genes, rng, self.gene_dropout, self.modality_dropout)


def _unbatched(item: CellBatch) -> CellBatch:
    return item


def training_loader(cells: CellMatrix, config: TrainConfig, num_replicas: int = 1, rank: int = 0,
                    chunk_size: int = DEFAULT_CHUNK_SIZE, window_chunks: int = DEFAULT_WINDOW_CHUNKS
                    ) -> torch.utils.data.DataLoader:
    """Source-homogeneous, shuffled mini-batches with teacher gene subsampling.

    In-memory cells are shuffled globally (:class:`SourceBatchSampler`); cells
    whose matrix is on disk are streamed window by window
    (:class:`~scconcerto.data.streaming.StreamingBatches`, read ahead in a
    background thread; ``chunk_size`` rows per read, ``window_chunks`` reads
    mixed per window). Under data parallelism each rank gets its share
    (``num_replicas``, ``rank``).
    """
    if is_backed_csr(cells.X):
        stream = StreamingBatches(cells, config.batch_size, config.max_genes, config.gene_dropout, config.seed,
                                  chunk_size, window_chunks, num_replicas, rank,
                                  modality_dropout=config.modality_dropout)
        return torch.utils.data.DataLoader(stream, batch_size=None, collate_fn=_unbatched, num_workers=0)
    sampler = SourceBatchSampler(cells.domains, config.batch_size, shuffle=True, seed=config.seed,
                                 num_replicas=num_replicas, rank=rank)
    dataset = CellBatchDataset(cells, config.max_genes, config.seed, config.gene_dropout, config.modality_dropout)
    workers, pin = loader_workers(config, num_replicas)
    return torch.utils.data.DataLoader(dataset,
                                       sampler=sampler, batch_size=None, collate_fn=_unbatched,
                                       num_workers=workers, persistent_workers=workers > 0, pin_memory=pin)


def loader_workers(config: TrainConfig, processes: int = 1) -> tuple[int, bool]:
    """DataLoader workers and memory pinning for in-memory training.

    On a GPU the host assembles each mini-batch (gene sampling, the ragged layout:
    5.7 ms for 256 cells on an H100 machine's CPU, as long as the step itself), so
    by default up to 4 workers per process assemble them ahead, in pinned memory.
    On CPUs the cores run the model: no workers unless asked for.
    """
    on_gpu = resolve_device(config.device).type == "cuda"
    if config.num_workers is not None:
        return int(config.num_workers), on_gpu and config.num_workers > 0
    if not on_gpu:
        return 0, False
    workers = max(0, min(4, available_cpus() // max(1, processes) - 1))
    return workers, workers > 0


def batch_seed(seed: int, epoch: int, rows: torch.Tensor) -> int:
    """A seed for the random parts of one training step (dropout), from the batch's first rows.

    It depends on the data only, not on which process or step runs the batch,
    so data-parallel runs draw the same masks as one process seeing the same batches.
    """
    head = rows[:4].tolist() if rows.device.type == "cpu" else rows[:4].cpu().tolist()
    return int(np.random.default_rng([seed, epoch, *head, int(rows.shape[0])]).integers(2**63 - 1))


class CpuThreads:
    """Thread settings while the fused CPU kernels run, restored afterwards.

    The fused attention kernels use ``cpus / processes`` threads of their own;
    torch's OpenMP pool is cut to ``cpus // 8`` (at least one) because its idle
    threads spin and steal the cores the kernels need (on 2 shared cores, a
    training epoch ran 10x slower with both pools at full size).
    ``SCCONCERTO_TORCH_THREADS`` overrides the torch share.
    """

    def __init__(self, processes: int = 1):
        self.processes = max(1, processes)
        self._saved: tuple[int, int | None] | None = None

    def __enter__(self) -> "CpuThreads":
        if get_attention_backend() in ("auto", "fused") and fused_available():
            from ..nn import fused_attention

            cpus = available_cpus()
            self._saved = (torch.get_num_threads(), fused_attention.num_threads_setting())
            env = os.environ.get("SCCONCERTO_TORCH_THREADS")
            torch.set_num_threads(int(env) if env else max(1, cpus // self.processes // 8))
            fused_attention.set_num_threads(max(1, cpus // self.processes))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            from ..nn import fused_attention

            torch.set_num_threads(self._saved[0])
            fused_attention.set_num_threads(self._saved[1])
            self._saved = None


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """``(world, *tensor.shape)``: ``tensor`` of every rank, in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


class RunningStatsSync:
    """Data-parallel ranks update the domain-specific BN running statistics with every rank's batch.

    In training mode each DSBN normalizes by its batch's statistics and moves
    its running statistics toward them. Under DDP every rank would only see its
    own batches; instead, each step the batch statistics of all ranks are
    gathered and applied in rank order on every rank, exactly as one process
    would apply them when accumulating the ranks' batches in that order.
    Batches must hold one source (as the training samplers make them).
    """

    def __init__(self, norms: list[torch.nn.Module]):
        self.norms = norms
        self._records: list[tuple[int, torch.Tensor, torch.Tensor] | None] = [None] * len(norms)
        self._snapshot: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handles = [norm.register_forward_pre_hook(self._recorder(i)) for i, norm in enumerate(norms)]

    def _recorder(self, i: int):  # noqa: ANN202 - a torch hook
        def hook(module: torch.nn.Module, args: tuple) -> None:
            x, domains = args[0], args[1]
            weights = args[2] if len(args) > 2 else None
            if not module.training or getattr(module, "_adapt_sums", None) is not None or x.shape[0] < 2:
                return
            first = domains[0]
            if not bool((domains == first).all()):
                raise RuntimeError("data-parallel training needs single-source batches (DSBN statistics sync)")
            with torch.no_grad():
                mean, var, factor = weighted_moments(x, weights)
                self._records[i] = (int(first), mean, var * factor)

        return hook

    def start_step(self) -> None:
        self._records = [None] * len(self.norms)
        self._snapshot = [(n.running_mean.clone(), n.running_var.clone()) for n in self.norms]

    def finish_step(self, all_gather) -> None:  # noqa: ANN001 - the strategy's all_gather
        """Replace each rank's own update by the updates of all ranks, in rank order."""
        if not self._snapshot:
            return
        packed = []
        for norm, record in zip(self.norms, self._records):
            c = norm.running_mean.shape[1]
            row = torch.zeros(2 + 2 * c, dtype=torch.float32, device=norm.running_mean.device)
            if record is not None:
                row[0], row[1] = 1.0, float(record[0])
                row[2:2 + c], row[2 + c:] = record[1].float(), record[2].float()
            packed.append(row)
        gathered = all_gather(torch.stack(packed))  # (world, n_norms, 2 + 2C)
        with torch.no_grad():
            for j, norm in enumerate(self.norms):
                mean, var = self._snapshot[j]
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                c = mean.shape[1]
                for r in range(gathered.shape[0]):
                    row = gathered[r, j]
                    if row[0] > 0:
                        d = int(row[1])
                        norm.running_mean[d].lerp_(row[2:2 + c].to(mean.dtype), norm.momentum)
                        norm.running_var[d].lerp_(row[2 + c:].to(var.dtype), norm.momentum)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class ContrastivePlan(L.LightningModule):
    """Trains teacher and student jointly with symmetric NT-Xent.

    Adam with a linear decay from ``lr`` to ``lr * lr_end_factor`` over all
    optimizer steps (one per iteration, or per ``accumulate_grad_batches``).
    Given ``cells``, the plan builds its own loader once the trainer knows the
    world size and rank (so each data-parallel rank gets its share); otherwise
    pass a loader to ``trainer.fit``. Each step's dropout is seeded from its
    batch (:func:`batch_seed`). When ``cells.balance_weights`` is set, each
    batch's cells carry their weights into the DSBN statistics (looked up by row,
    so in-memory and streamed batches alike).
    """

    def __init__(self, network: ConcertoNetwork, config: TrainConfig, total_steps: int | None = None,
                 cells: CellMatrix | None = None, loader_options: dict | None = None):
        super().__init__()
        self.network = network
        self.config = config
        self.total_steps = total_steps
        self.cells = cells
        self.loader_options = dict(loader_options or {})
        self.epoch_history: list[dict] = []
        self._epoch_losses: list[torch.Tensor] = []
        self._epoch_start = 0.0
        self._threads: CpuThreads | None = None
        self._step_seed: int | None = None
        self._stats_sync: RunningStatsSync | None = None
        weights = None if cells is None else cells.balance_weights
        self._balance_weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32))
        labels = None if cells is None else cells.training_labels
        self.prototypes: torch.nn.Parameter | None = None
        self._labels: torch.Tensor | None = None
        if labels is not None and config.label_weight > 0 and (np.asarray(labels) >= 0).any():
            self._labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
            generator = torch.Generator().manual_seed(int(config.seed))
            n_groups, width = int(self._labels.max()) + 1, network.teacher_tail.dense.out_features
            self.prototypes = torch.nn.Parameter(torch.randn(n_groups, width, generator=generator))

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        if self.cells is None:
            raise RuntimeError("ContrastivePlan was built without cells: pass a loader to trainer.fit")
        return training_loader(self.cells, self.config, num_replicas=self.trainer.world_size,
                               rank=self.trainer.global_rank, **self.loader_options)

    def on_fit_start(self) -> None:
        if self.device.type == "cpu":
            self._threads = CpuThreads(processes=self.trainer.num_devices).__enter__()
        if self.trainer.world_size > 1:
            self._stats_sync = RunningStatsSync(self.network.domain_norms())

    def on_train_batch_start(self, batch: CellBatch, batch_idx: int) -> None:
        if self._stats_sync is not None:
            self._stats_sync.start_step()

    def on_train_batch_end(self, outputs: object, batch: CellBatch, batch_idx: int) -> None:
        if self._stats_sync is not None:
            self._stats_sync.finish_step(_all_gather)

    def on_fit_end(self) -> None:
        self.teardown("fit")

    def teardown(self, stage: str) -> None:
        if self._stats_sync is not None:
            self._stats_sync.remove()
            self._stats_sync = None
        if self._threads is not None:
            self._threads.__exit__(None, None, None)
            self._threads = None

    def training_step(self, batch: CellBatch, batch_idx: int) -> torch.Tensor:
        if self._step_seed is not None:
            torch.manual_seed(self._step_seed)
        z_teacher, z_student = self.network(batch)
        loss = nt_xent(z_teacher, z_student, self.config.temperature)
        if self.prototypes is not None:
            labels = self._labels[batch.rows.cpu()].to(z_teacher.device)
            supervised = 0.5 * (prototype_cross_entropy(z_teacher, self.prototypes, labels, self.config.temperature)
                                + prototype_cross_entropy(z_student, self.prototypes, labels, self.config.temperature))
            loss = loss + self.config.label_weight * supervised
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch.n_cells)
        self._epoch_losses.append(loss.detach())
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_losses = []
        self._epoch_start = time.perf_counter()
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):  # streamed data: Lightning only sets the epoch of samplers
            dataset.set_epoch(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        mean = float(torch.stack(self._epoch_losses).mean()) if self._epoch_losses else float("nan")
        self.epoch_history.append({"epoch": int(self.current_epoch), "loss": mean,
                                   "seconds": time.perf_counter() - self._epoch_start})
        self.log("epoch_loss", mean, prog_bar=True, sync_dist=True)

    def transfer_batch_to_device(self, batch: CellBatch, device: torch.device, dataloader_idx: int) -> CellBatch:
        self._step_seed = batch_seed(self.config.seed, self.current_epoch, batch.rows)  # rows still on the CPU
        if self._balance_weights is not None:
            batch.weights = self._balance_weights[batch.rows.cpu()]
        return batch.to(device)

    def configure_optimizers(self):  # noqa: ANN201 - Lightning signature
        opt = torch.optim.Adam(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        total = self.total_steps if self.total_steps is not None else int(self.trainer.estimated_stepping_batches)
        total = max(int(total), 1)
        end = self.config.lr_end_factor
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - (1.0 - end) * min(step, total) / total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["epoch_history"] = self.epoch_history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.epoch_history = list(checkpoint.get("epoch_history", []))
