"""Training settings, as a frozen dataclass saved with the model."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._errors import InputError

#: Seeds are non-negative and fit the 32 bits numpy's legacy generators take (torch takes 64).
MAX_SEED = 2**32 - 1


#: Cell visits of a large reference's training (at least 2 epochs): how it was chosen is in ``docs/scale.md``.
LARGE_REFERENCE_VISITS = 300_000


def default_epochs(n_cells: int) -> int:
    """Passes over a reference of ``n_cells``: about 60k cell visits for small references (at most 100
    epochs), 8 epochs up to 37.5k cells, then about ``LARGE_REFERENCE_VISITS`` visits (at least 2 epochs).

    How the schedule was chosen, with its measurements: ``docs/scale.md``.
    """
    n = max(n_cells, 1)
    return int(min(100, max(math.ceil(60_000 / n), min(8, max(2, math.ceil(LARGE_REFERENCE_VISITS / n))))))


@dataclass
class TrainingRecord:
    """What training measured (the ``training`` entry of ``config.json``).

    Attributes
    ----------
    seconds
        Wall time of the contrastive training.
    positive_pool_cells
        How many cells a cell's neighbour positives were searched among (0: the paper's views).
    source_shift
        The technical shift between the reference's sources (:func:`~scconcerto.data.source_effect.source_shift`),
        measured by ``source_norm="auto"``.
    """

    seconds: float | None = None
    positive_pool_cells: int = 0
    source_shift: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Settings of contrastive pre-training.

    Parameters
    ----------
    epochs
        Passes over the reference.
    batch_size
        Cells per mini-batch (each batch holds one source).
    lr
        Adam learning rate at the start; it decays linearly to ``lr * lr_end_factor``.
    lr_end_factor
        Final learning-rate fraction (the paper: lr/100).
    weight_decay
        Adam weight decay.
    temperature
        NT-Xent temperature.
    max_genes
        The teacher sees at most this many randomly drawn expressed genes per cell
        at training time (a gene-level augmentation that bounds cost); inference
        uses every expressed gene. ``None``: all.
    gene_dropout
        Fraction of a cell's expressed genes dropped, independently in each view,
        at training time (gene-level augmentation on top of the network dropout).
    modality_dropout
        Probability that a training batch's teacher view loses its proteins
        (RNA + protein models): the RNA-only teacher then learns the joint space.
    positive_neighbors
        The student view of a cell is drawn from one of its this many nearest
        cells (same source; same label when ``label_positives``), see
        :mod:`scconcerto.data.positives`. ``0``: the paper's two views of the cell itself.
    label_positives
        Whether neighbour positives were restricted to cells of the same reference label.
    positive_space
        Where they were searched (:data:`scconcerto.train.reference.POSITIVE_SPACES`): ``"centred"``
        (centred and scaled expression spaces), ``"joint"`` (uncentred SVD and scaled space) or ``"svd"``
        (the uncentred SVD; the default here is that of models saved before the setting existed).
    positive_rank
        How they were chosen among a cell's nearest cells (:data:`scconcerto.train.reference.POSITIVE_RANKS`):
        ``"nearest"`` (its ``k`` nearest; also what models saved before the setting existed load as) or
        ``"shared"`` (the ``k`` that share most of its nearest cells).
    positive_sources
        Which sources a cell's positives were drawn from: ``"any"`` (its nearest cells of every source)
        or ``"same"`` (its own source; the default here is that of models saved before the setting existed).
    label_weight
        Weight of the supervised term added to NT-Xent when labels shape training
        (:attr:`~scconcerto.data.cells.CellMatrix.training_labels`): the cross-entropy of each labeled
        cell's teacher and student outputs against one learned direction per label (cosine logits at
        ``temperature``). ``0``: contrastive only.
    balance
        What balanced the sources' batch-normalization statistics: ``"labels"``, ``"clusters"`` or
        ``"none"`` (see :mod:`scconcerto.data.composition`).
    source_norm
        Whether the sources were batch-normalized apart (``"source"``: one set of statistics per source, the
        default here is that of models saved before the setting existed) or together (``"shared"``).
    seed
        Seed for weights, shuffling, dropout and gene sampling.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    devices
        Number of devices (processes) for data-parallel training.
    strategy
        Lightning strategy (``"auto"``, ``"ddp"``...).
    precision
        Lightning precision (``"32-true"``, ``"bf16-mixed"``...).
    num_workers
        DataLoader workers assembling mini-batches; ``None``: up to 4 (pinned memory) when
        training on a GPU with the data in memory, else 0 (on CPUs the cores run the model).
    progress
        Draw a progress bar (on standard error); ``None``: as ``scconcerto.settings.progress``
        (by default only on a terminal or in a notebook; otherwise one ``info`` log line per epoch).
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    lr_end_factor: float = 0.01
    weight_decay: float = 0.0
    temperature: float = 0.1
    max_genes: int | None = 512
    gene_dropout: float = 0.0
    modality_dropout: float = 0.0
    positive_neighbors: int = 0
    label_positives: bool = False
    positive_space: str = "svd"
    positive_rank: str = "nearest"
    positive_sources: str = "same"
    label_weight: float = 0.0
    balance: str = "none"
    source_norm: str = "source"
    seed: int = 0
    device: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int | None = None
    progress: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _is_int(value: Any) -> bool:
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_seed(seed: Any, what: str = "seed") -> None:
    """A seed must be an integer in ``[0, MAX_SEED]``."""
    if not _is_int(seed) or not 0 <= int(seed) <= MAX_SEED:
        raise InputError(f"{what} must be an integer from 0 to {MAX_SEED}, got {seed!r}.")


def check_settings(settings: TrainConfig | dict, checkpoint_dir: str | Path | None = None,
                   resume: bool = False) -> None:
    """Refuse training settings that cannot work, with one paragraph each, before any work is done.

    ``settings`` is a :class:`TrainConfig` or a dict of some of its fields (``epochs=None``: by size).
    """
    s = settings.to_dict() if isinstance(settings, TrainConfig) else dict(settings)
    if resume and checkpoint_dir is None:
        raise InputError("resume=True (--resume) continues from the last checkpoint in checkpoint_dir, but no "
                         "checkpoint_dir (--checkpoint-dir) was given. Pass the folder of the interrupted run.")
    epochs = s.get("epochs")
    if epochs is not None and (not _is_int(epochs) or epochs < 1):
        raise InputError(f"epochs (--epochs) must be a whole number of passes, at least 1, got {epochs!r} (leave it "
                         "out to choose by the number of cells).")
    if "batch_size" in s and (not _is_int(s["batch_size"]) or s["batch_size"] < 2):
        raise InputError(f"batch_size must be at least 2 (contrastive negatives, batch norm), got {s['batch_size']!r}.")
    lr = s.get("lr", 1e-3)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise InputError(f"lr (--lr) must be a positive finite learning rate, got {lr!r}.")
    weight = s.get("label_weight", 0.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise InputError(f"label_weight (--label-weight) must be a finite weight, 0 or more (0: contrastive "
                         f"training only), got {weight!r}.")
    if "seed" in s and s["seed"] is not None:
        check_seed(s["seed"])
    if "devices" in s and (not _is_int(s["devices"]) or s["devices"] < 1):
        raise InputError(f"devices (--devices) must be at least 1, got {s['devices']!r}.")
    precisions = _precisions()
    if "precision" in s and precisions and s["precision"] not in precisions:
        names = ", ".join(dict.fromkeys(str(p) for p in precisions))
        raise InputError(f"Unknown precision {s['precision']!r}; use one of {names} (bf16-mixed or 16-mixed on "
                         "GPUs).")
    strategy = s.get("strategy", "auto")
    if isinstance(strategy, str) and strategy not in _strategies():
        raise InputError(f"Unknown strategy {strategy!r}; use auto or ddp (or another name in Lightning's "
                         "StrategyRegistry, e.g. ddp_spawn or fsdp).")
    if "device" in s:
        from .._hardware import resolve_device

        resolve_device(s["device"])


def _precisions() -> tuple:
    try:
        from typing import get_args

        from lightning.fabric.plugins.precision.precision import (_PRECISION_INPUT_INT, _PRECISION_INPUT_STR,
                                                                   _PRECISION_INPUT_STR_ALIAS)
    except ImportError:  # Lightning checks it when the trainer is built
        return ()
    return get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_STR_ALIAS) + get_args(_PRECISION_INPUT_INT)


def _strategies() -> set[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return {"auto", *StrategyRegistry.available_strategies()}
