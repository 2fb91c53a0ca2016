"""Run training with a Lightning Trainer, and run the trained network for inference."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ..data.cells import CellMatrix
from ..data.sampling import source_batches
from ..nn import ConcertoNetwork
from .config import TrainConfig
from .plan import ContrastivePlan, training_loader

log = logging.getLogger("scconcerto")

_ACCELERATORS = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "mps": "mps"}


def resolve_device(device: str) -> torch.device:
    """The torch device for inference (``auto`` picks CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if device == "gpu" else device)


def fit(network: ConcertoNetwork, cells: CellMatrix, config: TrainConfig, checkpoint_dir: str | Path | None = None,
        resume: bool = False) -> list[dict]:
    """Contrastive pre-training of ``network`` in place; returns the per-epoch history.

    With ``checkpoint_dir`` a checkpoint is written after every epoch
    (``last.ckpt``), and ``resume=True`` continues from it.
    """
    loader = training_loader(cells, config)
    steps = len(loader) * config.epochs
    plan = ContrastivePlan(network, config, total_steps=steps)
    callbacks = []
    ckpt_path = None
    if checkpoint_dir is not None:
        # one file, last.ckpt, rewritten after every epoch (Lightning writes it atomically)
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=str(checkpoint_dir), filename="last",
                                                             save_top_k=1, save_last=False, every_n_epochs=1,
                                                             enable_version_counter=False))
        last = Path(checkpoint_dir) / "last.ckpt"
        if resume and last.exists():
            ckpt_path = str(last)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    trainer = L.Trainer(max_epochs=config.epochs, accelerator=_ACCELERATORS.get(config.device, config.device),
                        devices=config.devices if config.devices > 1 else 1, strategy=config.strategy,
                        precision=config.precision, logger=False, enable_checkpointing=bool(callbacks),
                        callbacks=callbacks, enable_progress_bar=config.progress, enable_model_summary=False,
                        use_distributed_sampler=False, deterministic=False, num_sanity_val_steps=0,
                        default_root_dir=str(checkpoint_dir) if checkpoint_dir else os.getcwd())
    trainer.fit(plan, train_dataloaders=loader, ckpt_path=ckpt_path)
    network.cpu()
    return plan.epoch_history


@torch.no_grad()
def embed_cells(network: ConcertoNetwork, cells: CellMatrix, batch_size: int = 1024, device: str = "auto",
                adapt_domains: list[int] | None = None) -> np.ndarray:
    """Teacher embedding (eval mode, L2-normalized) of every cell, in source-homogeneous batches.

    Sources listed in ``adapt_domains`` are not in the network: a copy of the
    network gets AdaBN statistics for them first (forward passes only); the
    network passed in is never modified.
    """
    dev = resolve_device(device)
    net = network
    if adapt_domains:
        net = adapt_batch_norm(network, cells, adapt_domains, batch_size, device)
    net = net.to(dev).eval()
    out = np.empty((cells.n_cells, net.teacher_tail.dense.out_features), dtype=np.float32)
    for rows in source_batches(cells.domains, batch_size, shuffle=False):
        batch = cells.batch(rows).to(dev)
        out[rows] = net.embed(batch).float().cpu().numpy()
    if net is network:
        network.cpu()
    return out


@torch.no_grad()
def adapt_batch_norm(network: ConcertoNetwork, cells: CellMatrix, domains: list[int], batch_size: int = 1024,
                     device: str = "auto") -> ConcertoNetwork:
    """A copy of ``network`` whose domain-specific BNs have exact statistics for the new ``domains`` (AdaBN)."""
    dev = resolve_device(device)
    net = copy.deepcopy(network).cpu()
    n_known = net.teacher_tail.norm.n_domains
    new = sorted(set(domains))
    needed = max(new) + 1 - n_known
    for norm in net.domain_norms():
        norm.add_domains(needed)
        norm.start_adapting(new)
    net = net.to(dev).eval()
    mask = np.isin(cells.domains, new)
    for rows in source_batches(cells.domains[mask], batch_size, shuffle=False):
        batch = cells.batch(np.flatnonzero(mask)[rows]).to(dev)
        net.teacher(batch)
        net.student(batch)
    for norm in net.domain_norms():
        norm.finish_adapting()
    return net
