"""Training settings, as a frozen dataclass saved with the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
        Where they were searched: ``"joint"`` (plain and scaled expression spaces) or ``"svd"``
        (the plain space; the default here is that of models saved before the setting existed).
    balance
        What balanced the sources' batch-normalization statistics: ``"labels"``, ``"clusters"`` or
        ``"none"`` (see :mod:`scconcerto.data.composition`).
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
        Show a progress bar.
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
    balance: str = "none"
    seed: int = 0
    device: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int | None = None
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)
