"""Contrastive pre-training of a reference, as one function: check the settings, prepare the cells, their
positives and balance weights, fit the network, and embed the reference.

:meth:`scconcerto.Concerto.train` calls :func:`pretrain_reference` and keeps what it returns
(:class:`PretrainedReference`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import InputError
from ..data import label_codes, prepare_cells
from ..search.neighbors import searches_on_its_device
from .config import TrainConfig, TrainingRecord, check_settings, default_epochs
from .reference import balance_callbacks, has_positives, prepare_reference_training, restore_sources
from .runner import embed_cells, fit, is_global_zero, seeded_rng

if TYPE_CHECKING:
    import anndata as ad

    from ..data import DataSetup
    from ..nn import ConcertoNetwork

__all__ = ["PretrainedReference", "pretrain_reference"]


@dataclass
class PretrainedReference:
    """What :func:`pretrain_reference` gives the model.

    Attributes
    ----------
    config
        The training settings used.
    history
        One record per epoch (losses, learning rate).
    record
        What training measured (seconds, the positives' pool).
    reference
        The reference arrays the model stores for mapping, by the field names of
        :class:`~scconcerto.model.storage.ReferenceStore` (``embedding``, ``domains``, ``labels``, ``protein``,
        ``balance_groups``, ``calibration_rows``, ``scaled_expression``, ``scaled_space``); ``None`` on the
        processes of data-parallel training other than the first.
    n_cells
        Cells of the reference.
    """

    config: TrainConfig
    history: list[dict]
    record: TrainingRecord
    reference: dict[str, Any] | None
    n_cells: int


def _check_views(gene_dropout: Any, modality_dropout: float, positive_neighbors: int) -> None:
    if isinstance(gene_dropout, bool) or not isinstance(gene_dropout, (int, float)) or not 0.0 <= gene_dropout < 1.0:
        raise InputError(f"gene_dropout (--gene-dropout) must be at least 0 and below 1 (the share of a cell's "
                         f"genes hidden in a training view), got {gene_dropout!r}.")
    if not 0.0 <= modality_dropout <= 1.0:
        raise InputError(f"modality_dropout must be between 0 and 1, got {modality_dropout}.")
    if positive_neighbors < 0:
        raise InputError(f"positive_neighbors must be 0 (the paper's views) or more, got {positive_neighbors}.")


@searches_on_its_device  # neighbour positives: exact searches on the training GPU
def pretrain_reference(network: "ConcertoNetwork", adata: "ad.AnnData", setup: "DataSetup", *, seed: int,
                       epochs: int | None, batch_size: int, lr: float, max_genes: int | None, gene_dropout: float,
                       modality_dropout: float, positive_neighbors: int, label_positives: bool, label_weight: float,
                       positive_space: str, positive_sources: str, balance: str, source_norm: str, device: str,
                       positive_rank: str,
                       progress: bool | None, checkpoint_dir: str | Path | None,
                       resume: bool, **kwargs: Any) -> PretrainedReference:
    """Train ``network`` (in place) on the reference ``adata`` set up as ``setup``, then embed the reference.

    The settings are those of :meth:`scconcerto.Concerto.train` (``seed`` resolved); ``kwargs`` are other
    :class:`~scconcerto.train.TrainConfig` fields. Every setting is checked before any work.
    """
    check_settings({"epochs": epochs, "batch_size": batch_size, "lr": lr, "device": device, "seed": seed,
                    "label_weight": label_weight, **kwargs},
                   checkpoint_dir=checkpoint_dir, resume=resume)
    cells = prepare_cells(adata, setup, what="the reference").cells
    _check_views(gene_dropout, modality_dropout, positive_neighbors)
    labels = label_codes(adata, setup)
    inputs = prepare_reference_training(cells, [labels[key] for key in setup.label_keys], positive_neighbors,
                                        label_positives, positive_space, positive_sources, balance, seed,
                                        source_norm, positive_rank)
    config = TrainConfig(epochs=epochs or default_epochs(cells.n_cells), batch_size=batch_size, lr=lr,
                         max_genes=max_genes, gene_dropout=gene_dropout,
                         modality_dropout=modality_dropout if setup.proteins else 0.0,
                         positive_neighbors=positive_neighbors if has_positives(cells) else 0,
                         label_positives=inputs.label_positives, positive_space=inputs.positive_space,
                         positive_rank=inputs.positive_rank,
                         positive_sources=inputs.positive_sources,
                         label_weight=float(label_weight) if cells.training_labels is not None else 0.0,
                         balance=inputs.balance, source_norm=inputs.source_norm, seed=seed, device=device,
                         progress=progress, **kwargs)
    start = time.perf_counter()
    network.train()  # Lightning keeps submodule modes; an earlier embed left them in eval (no dropout)
    callbacks = balance_callbacks(cells, inputs, config.epochs, seed)
    with seeded_rng(config.seed, device):  # forks (and seeds) the CPU and, when used, the CUDA generator
        history = fit(network, cells, config, checkpoint_dir=checkpoint_dir, resume=resume, callbacks=callbacks)
    restore_sources(network, cells, inputs)
    record = TrainingRecord(seconds=time.perf_counter() - start, positive_pool_cells=inputs.positive_pool_cells,
                            source_shift=inputs.source_shift)
    reference = None
    if is_global_zero():  # data-parallel: only rank 0 embeds the reference
        reference = {"embedding": embed_cells(network, cells, device=config.device), "domains": cells.domains,
                     "labels": labels, "protein": cells.protein, "balance_groups": inputs.balance_groups,
                     "calibration_rows": None if inputs.calibration_rows is None
                     else inputs.calibration_rows.astype(np.int64)}
        if inputs.scaled is not None:  # mapping's label decision reads the scaled expression space
            reference["scaled_expression"], reference["scaled_space"] = inputs.scaled
    return PretrainedReference(config=config, history=history, record=record, reference=reference,
                               n_cells=cells.n_cells)
