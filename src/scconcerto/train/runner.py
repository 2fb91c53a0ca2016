"""Run training with a Lightning Trainer (one process, or data-parallel), and run the trained network for inference.

Data parallelism uses Lightning's DDP: ``TrainConfig(devices=N, strategy="ddp")``
starts N processes (gloo on CPUs, NCCL on GPUs), or the script is started by
``torchrun`` (one or many nodes; see ``benchmarks/SCALE.md``). Every rank
builds the same model, reads its own share of the batches (its own file
chunks when streaming), and gradients are averaged, so N ranks with batch ``B``
take the steps one process would take with gradient accumulation over N
batches of ``B``.

Inference walks the cells in row order, block by block, building the next
batch in a background thread; cells whose matrix is on disk are never loaded
whole (:func:`iter_embeddings` yields the embedding block by block).
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch

from .._ragged import CellBatch
from ..data.backed import prefetch, release_freed_memory
from ..data.cells import CellMatrix
from ..nn import ConcertoNetwork
from .config import TrainConfig
from .plan import ContrastivePlan, CpuThreads

log = logging.getLogger("scconcerto")

_ACCELERATORS = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "mps": "mps"}


def resolve_device(device: str) -> torch.device:
    """The torch device for inference (``auto`` picks CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if device == "gpu" else device)


def _strategy(config: TrainConfig):  # noqa: ANN202 - a Lightning strategy or its name
    """Data-parallel runs use DDP without per-step buffer broadcasts (gloo on CPUs, NCCL on GPUs).

    Instead of copying rank 0's buffers to every rank before each step, the
    domain-specific BN running statistics are updated on every rank with every
    rank's batch statistics (:class:`~scconcerto.train.plan.RunningStatsSync`).
    """
    devices, num_nodes = _layout(config)
    if devices * num_nodes > 1 and config.strategy in ("ddp", "auto"):
        from lightning.pytorch.strategies import DDPStrategy

        backend = "gloo" if resolve_device(config.device).type == "cpu" else None
        return DDPStrategy(process_group_backend=backend, forward_sync_buffers=False)
    return config.strategy


def _layout(config: TrainConfig) -> tuple[int, int]:
    """Devices per node and nodes: from ``torchrun``'s environment when it started us, else the config."""
    world, local = os.environ.get("WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
    if world and local and "TORCHELASTIC_RUN_ID" in os.environ:
        return int(local), max(1, int(world) // int(local))
    return max(1, config.devices), 1


def fit(network: ConcertoNetwork, cells: CellMatrix, config: TrainConfig, checkpoint_dir: str | Path | None = None,
        resume: bool = False, accumulate_grad_batches: int = 1, loader_options: dict | None = None,
        callbacks: list[L.Callback] | None = None) -> list[dict]:
    """Contrastive pre-training of ``network`` in place; returns the per-epoch history.

    Parameters
    ----------
    network
        The network to train (moved back to the CPU afterwards).
    cells
        Training cells, in memory or streamed from disk (``cells.X`` a
        :class:`~scconcerto.data.backed.BackedCSR`).
    config
        Training settings; ``devices``/``strategy`` select data-parallel training.
    checkpoint_dir
        Write ``last.ckpt`` there after every epoch; ``resume=True`` continues from it.
    accumulate_grad_batches
        Batches whose gradients are summed before each optimizer step.
    loader_options
        ``chunk_size`` / ``window_chunks`` of the streaming loader.
    callbacks
        Extra Lightning callbacks (e.g. an evaluation after every epoch).

    Notes
    -----
    Under DDP every rank runs this function (Lightning re-runs the script, or
    ``torchrun`` starts it); use :func:`is_global_zero` to write outputs once.
    """
    plan = ContrastivePlan(network, config, cells=cells, loader_options=loader_options)
    callbacks = list(callbacks or [])
    ckpt_path = None
    if checkpoint_dir is not None:
        # one file, last.ckpt, rewritten after every epoch (Lightning writes it atomically); with
        # save_top_k=0 Lightning would write it only at the end of training
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=str(checkpoint_dir), filename="last",
                                                             save_top_k=1, save_last=False, every_n_epochs=1,
                                                             enable_version_counter=False))
        last = Path(checkpoint_dir) / "last.ckpt"
        if resume and last.exists():
            ckpt_path = str(last)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    devices, num_nodes = _layout(config)
    trainer = L.Trainer(max_epochs=config.epochs, accelerator=_ACCELERATORS.get(config.device, config.device),
                        devices=devices, num_nodes=num_nodes, strategy=_strategy(config),
                        precision=config.precision, logger=False, enable_checkpointing=checkpoint_dir is not None,
                        callbacks=callbacks, enable_progress_bar=config.progress, enable_model_summary=False,
                        use_distributed_sampler=False, deterministic=False, num_sanity_val_steps=0,
                        accumulate_grad_batches=accumulate_grad_batches,
                        default_root_dir=str(checkpoint_dir) if checkpoint_dir else os.getcwd())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")  # our length is exact
        trainer.fit(plan, ckpt_path=ckpt_path)
    network.cpu()
    return plan.epoch_history


def is_global_zero() -> bool:
    """Whether this process is rank 0 of a data-parallel run (always true in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def _row_blocks(n_cells: int, rows: np.ndarray | None, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive batches of ``rows`` (default: all rows), in row order."""
    if rows is None:
        for start in range(0, n_cells, batch_size):
            yield np.arange(start, min(start + batch_size, n_cells), dtype=np.int64)
        return
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if rows.size == 0:
        return
    yield from np.array_split(rows, -(-rows.size // batch_size))  # near-equal batches, no tiny remainder


def _batches(cells: CellMatrix, rows: np.ndarray | None, batch_size: int) -> Iterator[tuple[np.ndarray, CellBatch]]:
    """``(rows, batch)`` in row order, the next one built in a background thread."""

    def build() -> Iterator[tuple[np.ndarray, CellBatch]]:
        for i, r in enumerate(_row_blocks(cells.n_cells, rows, batch_size)):
            if i % 64 == 63:
                release_freed_memory()
            yield r, cells.batch(r)

    return prefetch(build(), depth=2)


@torch.no_grad()
def iter_embeddings(network: ConcertoNetwork, cells: CellMatrix, batch_size: int = 1024, device: str = "auto",
                    adapt_domains: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(rows, embedding of rows)`` block by block, in row order (teacher, eval mode, L2-normalized).

    Only one batch of cells (and the next, being read) is in memory, so a query
    on disk of any size streams through. Sources in ``adapt_domains`` are not in
    the network: their teacher BN statistics are estimated on their own cells
    (AdaBN) on a copy of the network. That needs every cell's pooled hidden
    vector before any output, so the pass that accumulates the statistics keeps
    the hidden vectors (``d`` floats a cell, the size of the output) and the
    output layers are then applied to them; the attention over genes, the
    expensive part, runs once per cell.
    """
    dev = resolve_device(device)
    with CpuThreads() if dev.type == "cpu" else nullcontext():
        if not adapt_domains:
            net = network.to(dev).eval()
            try:
                for rows, batch in _batches(cells, None, batch_size):
                    yield rows, net.embed(batch.to(dev)).float().cpu().numpy()
            finally:
                network.cpu()
            return
        net = _with_new_domains(network, adapt_domains).to(dev).eval()
        norm = net.teacher_tail.norm
        hidden = np.empty((cells.n_cells, norm.num_features), dtype=np.float32)
        norm.start_adapting(sorted(set(adapt_domains)))
        for rows, batch in _batches(cells, None, batch_size):
            batch = batch.to(dev)
            h, _ = net.teacher_hidden(batch.teacher)
            norm(h, batch.domains)  # accumulates the new sources' statistics
            hidden[rows] = h.float().cpu().numpy()
        norm.finish_adapting()
        domains = torch.from_numpy(cells.domains)
        for start in range(0, cells.n_cells, batch_size):
            stop = min(start + batch_size, cells.n_cells)
            h = torch.from_numpy(hidden[start:stop]).to(dev)
            z = net.teacher_tail(h, domains[start:stop].to(dev))
            emb = torch.nn.functional.normalize(z, dim=1, eps=1e-12).float().cpu().numpy()
            yield np.arange(start, stop), emb


def _with_new_domains(network: ConcertoNetwork, domains: list[int]) -> ConcertoNetwork:
    """A CPU copy of ``network`` with domain-specific BN slots up to the largest of ``domains``."""
    net = copy.deepcopy(network).cpu()
    needed = max(domains) + 1 - net.teacher_tail.norm.n_domains
    if needed > 0:
        for norm in net.domain_norms():
            norm.add_domains(needed)
    return net


def embed_cells(network: ConcertoNetwork, cells: CellMatrix, batch_size: int = 1024, device: str = "auto",
                adapt_domains: list[int] | None = None) -> np.ndarray:
    """Teacher embedding (eval mode, L2-normalized) of every cell.

    Sources listed in ``adapt_domains`` are not in the network: a copy of the
    network gets AdaBN statistics for them first (forward passes only); the
    network passed in is never modified. A cell's embedding does not depend on
    the other cells of its batch (except through AdaBN statistics), so batches
    simply follow the row order, mixing sources.
    """
    out = np.empty((cells.n_cells, network.teacher_tail.dense.out_features), dtype=np.float32)
    for rows, emb in iter_embeddings(network, cells, batch_size, device, adapt_domains):
        out[rows] = emb
    return out


@torch.no_grad()
def adapt_batch_norm(network: ConcertoNetwork, cells: CellMatrix, domains: list[int], batch_size: int = 1024,
                     device: str = "auto") -> ConcertoNetwork:
    """A copy of ``network`` whose domain-specific BNs have exact statistics for the new ``domains`` (AdaBN).

    The statistics are sums over all cells of each new source, accumulated
    batch by batch, so they do not depend on the batch size or order.
    """
    dev = resolve_device(device)
    new = sorted(set(domains))
    net = _with_new_domains(network, new)
    for norm in net.domain_norms():
        norm.start_adapting(new)
    net = net.to(dev).eval()
    rows = np.flatnonzero(np.isin(cells.domains, new))
    with CpuThreads() if dev.type == "cpu" else nullcontext():
        for _, batch in _batches(cells, rows, batch_size):
            batch = batch.to(dev)
            net.teacher(batch)
            net.student(batch)
    for norm in net.domain_norms():
        norm.finish_adapting()
    return net
