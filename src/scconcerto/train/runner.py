"""Run training with a Lightning Trainer (one process, or data-parallel), and run the trained network for inference.

Data parallelism uses Lightning's DDP: ``TrainConfig(devices=N, strategy="ddp")``
starts N processes (gloo on CPUs, NCCL on GPUs), or the script is started by
``torchrun`` (one or many nodes; see ``docs/scale.md``). Every rank
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
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from .._errors import InputError
from .._hardware import resolve_device
from .._settings import quiet_third_party
from .._ragged import CellBatch
from ..data.backed import prefetch, release_freed_memory
from ..data.cells import CellMatrix
from ..nn import ConcertoNetwork
from .checkpoints import RunRecord, SafeCheckpointIO, check_resumable
from .config import TrainConfig, check_settings
from .plan import ContrastivePlan, CpuThreads
from .progress import progress_callbacks

log = logging.getLogger("scconcerto")
#: A network with domain-specific batch norms (``domain_norms()``): Concerto's or a classifier.
NetworkT = TypeVar("NetworkT", bound=torch.nn.Module)

_ACCELERATORS = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "mps": "mps"}


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
    check_settings(config, checkpoint_dir=checkpoint_dir, resume=resume)
    plan = ContrastivePlan(network, config, cells=cells, loader_options=loader_options)
    callbacks = list(callbacks or [])
    ckpt_path = None
    plugins = []
    if checkpoint_dir is not None:
        # one file, last.ckpt, rewritten after every epoch (atomically, in its folder: SafeCheckpointIO); with
        # save_top_k=0 Lightning would write it only at the end of training
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=str(checkpoint_dir), filename="last",
                                                             save_top_k=1, save_last=False, every_n_epochs=1,
                                                             enable_version_counter=False))
        callbacks.append(RunRecord(config, cells.n_cells))
        plugins.append(SafeCheckpointIO())
        last = Path(checkpoint_dir) / "last.ckpt"
        if resume and last.exists():
            check_resumable(last, config, cells.n_cells, plan)
            ckpt_path = str(last)
        elif resume:
            log.warning("No checkpoint in %s yet: training from the first epoch.", checkpoint_dir)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    show_bar, shown = progress_callbacks(config.progress, "training")
    callbacks += shown
    devices, num_nodes = _layout(config)
    try:
        trainer = L.Trainer(max_epochs=config.epochs, accelerator=_ACCELERATORS.get(config.device, config.device),
                            devices=devices, num_nodes=num_nodes, strategy=_strategy(config),
                            precision=config.precision, logger=False, enable_checkpointing=checkpoint_dir is not None,
                            callbacks=callbacks, enable_progress_bar=show_bar, enable_model_summary=False,
                            use_distributed_sampler=False, deterministic=False, num_sanity_val_steps=0,
                            accumulate_grad_batches=accumulate_grad_batches, plugins=plugins or None,
                            default_root_dir=str(checkpoint_dir) if checkpoint_dir else os.getcwd())
    except (ValueError, MisconfigurationException) as exc:
        raise InputError(f"Lightning refused the training settings: {exc}") from exc
    ours = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    with quiet_third_party():  # e.g. the IterableDataset length warning: our length is exact
        try:
            trainer.fit(plan, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit:
            if not trainer.interrupted:
                raise
            _restore_interrupt_handler()  # Lightning ignores Ctrl-C from then on and exits with status 1
            raise KeyboardInterrupt from None
    if ours:
        _close_process_group()
    network.cpu()
    return plan.epoch_history


def _restore_interrupt_handler() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


_finished_rank: int | None = None  # this process's rank in the last data-parallel fit (its group is closed)


def _close_process_group() -> None:
    """After a data-parallel fit, wait for every rank, then close the process group Lightning opened.

    Rank 0 goes on alone (reference embedding), while the other ranks return and
    exit; a gloo group left open tore down under a running rank 0 and aborted
    rank 1 at exit ("terminate called without an active exception") in about
    one run in five. The rank is kept for :func:`is_global_zero`.
    """
    global _finished_rank
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    _finished_rank = torch.distributed.get_rank()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def is_global_zero() -> bool:
    """Whether this process is rank 0 of a data-parallel run (always true in a single process).

    Uses the process group when it exists, else the rank of the last
    data-parallel :func:`fit` (which closes the group it opened), else the
    launcher's environment: ``RANK`` (torchrun), or ``NODE_RANK`` and
    ``LOCAL_RANK`` (processes started by Lightning).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    if _finished_rank is not None:
        return _finished_rank == 0
    if os.environ.get("RANK"):
        return int(os.environ["RANK"]) == 0
    return all(int(os.environ.get(name) or 0) == 0 for name in ("NODE_RANK", "LOCAL_RANK"))


def rng_devices(device: str) -> list[int]:
    """The CUDA devices whose random state training on ``device`` uses (and must fork); empty on CPU.

    One device per process: the index in ``device`` (``"cuda:1"``), else this
    process's local rank (DDP puts rank ``r`` of a node on GPU ``r``), else 0.
    Only that device is touched, so other GPUs get no CUDA context.
    """
    dev = resolve_device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return []
    index = dev.index if dev.index is not None else int(os.environ.get("LOCAL_RANK") or 0)
    return [min(index, torch.cuda.device_count() - 1)]


@contextmanager
def seeded_rng(seed: int, device: str = "cpu") -> Iterator[None]:
    """Run the block with torch's generators seeded by ``seed``; restore the caller's states afterwards.

    The CPU generator is always forked; the CUDA generator of the device that
    ``device`` resolves to (:func:`rng_devices`) is forked too, so training on
    a GPU is reproducible and leaves the caller's CUDA random state as it was.
    CPU results do not change (the CPU generator is seeded the same way).
    """
    with torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(seed)
        yield


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


def _batches(cells: CellMatrix, rows: np.ndarray | None, batch_size: int,
             device: torch.device) -> Iterator[tuple[np.ndarray, CellBatch]]:
    """``(rows, batch)`` of inference in row order, the next one built in a background thread; batches of
    at least ``GPU_INFERENCE_BATCH`` cells on a GPU (:func:`inference_batch_size`)."""
    batch_size = inference_batch_size(batch_size, device)

    def build() -> Iterator[tuple[np.ndarray, CellBatch]]:
        for i, r in enumerate(_row_blocks(cells.n_cells, rows, batch_size)):
            if i % 64 == 63:
                release_freed_memory()
            yield r, cells.batch(r)

    return prefetch(build(), depth=2)


GPU_INFERENCE_BATCH = 4096


def inference_batch_size(batch_size: int, device: torch.device) -> int:
    """Cells per inference batch: ``batch_size``, at least ``GPU_INFERENCE_BATCH`` on a GPU."""
    return max(int(batch_size), GPU_INFERENCE_BATCH) if device.type == "cuda" else int(batch_size)


@torch.no_grad()
def iter_embeddings(network: ConcertoNetwork, cells: CellMatrix, batch_size: int = 1024, device: str = "auto",
                    adapt_domains: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(rows, embedding of rows)`` block by block, in row order (teacher, eval mode, L2-normalized).

    Only one batch of cells (and the next, being read) is in memory, so a query
    on disk of any size streams through. Sources in ``adapt_domains`` are not in
    the network: their teacher BN statistics are estimated on their own cells
    (AdaBN) on a copy of the network, in a first pass over those cells that
    keeps only running sums per source (:func:`estimate_teacher_statistics`);
    the second pass embeds. Memory stays that of a batch whatever the number of
    cells; the attention runs twice for cells of adapted sources. On a GPU,
    batches hold at least ``GPU_INFERENCE_BATCH`` cells (fewer, larger transfers;
    the results do not depend on the batch size).
    """
    dev = resolve_device(device)
    with CpuThreads() if dev.type == "cpu" else nullcontext():
        net = network
        if adapt_domains:
            net = with_new_domains(network, adapt_domains).to(dev).eval()
            estimate_teacher_statistics(net, cells, adapt_domains, batch_size, dev)
        net = net.to(dev).eval()
        try:
            for rows, batch in _batches(cells, None, batch_size, dev):
                yield rows, net.embed(batch.to(dev)).float().cpu().numpy()
        finally:
            network.cpu()


@torch.no_grad()
def estimate_teacher_statistics(network: ConcertoNetwork, cells: CellMatrix, domains: list[int], batch_size: int,
                                device: torch.device) -> None:
    """Set the teacher BN statistics of ``domains`` (slots already in ``network``) from their cells (AdaBN).

    One streamed pass over the cells of ``domains``: each batch's pooled hidden
    vectors are added to per-source running sums (count, sum, sum of squares,
    in float64; :meth:`~scconcerto.nn.dsbn.DomainSpecificBatchNorm1d.start_adapting`)
    and dropped, so memory does not grow with the number of cells. The
    statistics are sums over all the cells, independent of the batch size and
    order (to float64 rounding).
    """
    new = sorted(set(int(d) for d in domains))
    in_new = np.isin(cells.domains, new)
    rows = None if bool(in_new.all()) else np.flatnonzero(in_new)
    norm = network.teacher_tail.norm
    norm.start_adapting(new)
    for _, batch in _batches(cells, rows, batch_size, device):
        batch = batch.to(device)
        hidden, _ = network.teacher_hidden(batch.teacher)
        norm(hidden, batch.domains)  # adds the batch to its sources' sums
    norm.finish_adapting()


@torch.no_grad()
def pooled_hidden_states(module: torch.nn.Module, pool: Callable[[dict], torch.Tensor], width: int,
                         cells: CellMatrix, rows: np.ndarray, batch_size: int = 1024, device: str = "auto"
                         ) -> np.ndarray:
    """``pool(batch.teacher)`` (a network's pooled hidden vectors before its source-specific BN) of ``rows`` in
    increasing order, ``(len(rows), width)`` float32; ``module`` (whose method ``pool`` is) runs in eval mode on
    ``device`` and is left on the CPU in its mode."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    dev = resolve_device(device)
    out = np.empty((len(rows), width), dtype=np.float32)
    was_training = module.training
    module.to(dev).eval()
    pos = 0
    try:
        with CpuThreads() if dev.type == "cpu" else nullcontext():
            for r, batch in _batches(cells, rows, batch_size, dev):
                out[pos:pos + len(r)] = pool(batch.to(dev).teacher).float().cpu().numpy()
                pos += len(r)
    finally:
        module.cpu().train(was_training)
    return out


def teacher_hidden_states(network: ConcertoNetwork, cells: CellMatrix, rows: np.ndarray, batch_size: int = 1024,
                          device: str = "auto") -> np.ndarray:
    """The teacher's pooled hidden vectors before its source-specific BN, ``(len(rows), dim)`` float32, for
    ``rows`` in increasing order."""
    return pooled_hidden_states(network, lambda views: network.teacher_hidden(views)[0],
                                network.teacher_tail.norm.num_features, cells, rows, batch_size, device)


@torch.no_grad()
def map_hidden(module: torch.nn.Module, fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
               widths: tuple[int, ...], hidden: np.ndarray, domains: np.ndarray, batch_size: int = 65_536
               ) -> tuple[np.ndarray, ...]:
    """``fn(hidden, domains)`` over pooled hidden vectors (:func:`teacher_hidden_states`) in blocks of
    ``batch_size``, with ``module`` in eval mode on the CPU (its mode restored after): one float32
    ``(len(hidden), width)`` array per output of ``fn``, of the given ``widths``."""
    was_training = module.training
    module.cpu().eval()
    outs = tuple(np.empty((len(hidden), width), dtype=np.float32) for width in widths)
    try:
        for start in range(0, len(hidden), batch_size):
            h = torch.from_numpy(np.ascontiguousarray(hidden[start:start + batch_size]))
            d = torch.from_numpy(np.asarray(domains[start:start + batch_size], dtype=np.int64))
            for out, block in zip(outs, fn(h, d)):
                out[start:start + len(h)] = block.numpy()
    finally:
        module.train(was_training)
    return outs


def embed_hidden(network: ConcertoNetwork, hidden: np.ndarray, domains: np.ndarray, batch_size: int = 65_536
                 ) -> np.ndarray:
    """L2-normalized teacher embedding of pooled hidden vectors (:func:`teacher_hidden_states`) of ``domains``."""
    return map_hidden(network, lambda h, d: (network.embed_hidden(h, d),),
                      (network.teacher_tail.dense.out_features,), hidden, domains, batch_size)[0]


def with_new_domains(network: NetworkT, domains: list[int]) -> NetworkT:
    """A CPU copy of ``network`` (a Concerto network or a classifier: any module with ``domain_norms()``) with
    domain-specific BN slots up to the largest of ``domains``."""
    net = copy.deepcopy(network).cpu()
    needed = max(int(d) for d in domains) + 1 - net.domain_norms()[0].n_domains
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
    net = with_new_domains(network, new)
    for norm in net.domain_norms():
        norm.start_adapting(new)
    net = net.to(dev).eval()
    rows = np.flatnonzero(np.isin(cells.domains, new))
    with CpuThreads() if dev.type == "cpu" else nullcontext():
        for _, batch in _batches(cells, rows, batch_size, dev):
            batch = batch.to(dev)
            net.teacher(batch)
            net.student(batch)
    for norm in net.domain_norms():
        norm.finish_adapting()
    return net
