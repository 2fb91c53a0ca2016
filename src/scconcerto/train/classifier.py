"""Lightning plan for supervised classifier fine-tuning and domain adaptation, and classifier inference.

Fine-tuning trains the teacher and a dense + softmax head with cross-entropy
on labeled source cells (source-homogeneous mini-batches, domain-specific BN).
With an unlabeled target, every step also takes a target mini-batch (its own
BN domains) and adds a consistency loss: the prediction under one augmented
view (gene dropout + network dropout), sharpened, is the target for the
prediction under another view. Both terms are back-propagated.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from .._defaults import DEFAULT_CLASSIFIER_LR
from .._ragged import CellBatch
from .._settings import quiet_third_party
from ..data.cells import CellMatrix
from ..data.sampling import source_batches
from ..nn.consistency import consistency_loss
from ..nn.heads import TeacherClassifier
from .plan import CellBatchDataset, _unbatched
from .progress import progress_callbacks
from .runner import _ACCELERATORS, map_hidden, pooled_hidden_states, resolve_device, with_new_domains

log = logging.getLogger("scconcerto")


@dataclass(frozen=True)
class ClassifierConfig:
    """Settings of classifier fine-tuning (and domain adaptation), saved with the model.

    Parameters
    ----------
    epochs
        Passes over the labeled cells (or over the target, when it is larger).
    batch_size
        Cells per (single-source) mini-batch, for source and target alike.
    lr
        Adam learning rate at the start; decays linearly to ``lr * lr_end_factor``.
    lr_end_factor
        Final learning-rate fraction.
    weight_decay
        Adam weight decay.
    max_genes
        At most this many expressed genes per cell in the training view (``None``: all).
    gene_dropout
        Fraction of expressed genes dropped per training view (augmentation).
    class_balanced
        Weight the cross-entropy by inverse class frequency (``n / (C n_c)``).
    label_smoothing
        Label smoothing of the cross-entropy.
    consistency_weight
        Weight of the target consistency loss (used only with a target).
    sharpen_temperature
        Sharpening temperature of the consistency targets.
    consistency_min_confidence
        Target cells whose unsharpened top probability is below this are left out of the consistency loss.
    seed
        Seed of the head, shuffling, dropout and gene sampling.
    device, precision, num_workers, progress
        As in :class:`~scconcerto.train.TrainConfig`.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = DEFAULT_CLASSIFIER_LR
    lr_end_factor: float = 0.01
    weight_decay: float = 0.0
    max_genes: int | None = 512
    gene_dropout: float = 0.2
    class_balanced: bool = False
    label_smoothing: float = 0.0
    consistency_weight: float = 1.0
    sharpen_temperature: float = 0.5
    consistency_min_confidence: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    progress: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class RowBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled source-homogeneous mini-batches over a subset ``rows`` of a dataset (reshuffled per epoch)."""

    def __init__(self, domains: np.ndarray, rows: np.ndarray, batch_size: int, seed: int = 0):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.domains = np.asarray(domains)[self.rows]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        for b in source_batches(self.domains, self.batch_size, shuffle=True, seed=self.seed, epoch=self.epoch):
            yield self.rows[b].tolist()

    def __len__(self) -> int:
        return len(source_batches(self.domains, self.batch_size, shuffle=False))


def rows_loader(cells: CellMatrix, rows: np.ndarray, config: ClassifierConfig, seed: int
                ) -> torch.utils.data.DataLoader:
    """Augmented training mini-batches of ``rows`` of ``cells`` (teacher view: gene dropout + at most ``max_genes``)."""
    dataset = CellBatchDataset(cells, config.max_genes, seed, config.gene_dropout)
    return torch.utils.data.DataLoader(dataset, sampler=RowBatchSampler(cells.domains, rows, config.batch_size, seed),
                                       batch_size=None, collate_fn=_unbatched, num_workers=config.num_workers,
                                       persistent_workers=config.num_workers > 0)


def class_weights(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights ``n / (C_present n_c)`` (0 for classes absent from ``codes``)."""
    counts = np.bincount(codes[codes >= 0], minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w.astype(np.float32)


class ClassifierPlan(L.LightningModule):
    """Cross-entropy on labeled source batches, plus the consistency loss on target batches when given.

    A training batch is a dict ``{"source": CellBatch, "target": CellBatch}``
    (``"target"`` optional). ``labels`` holds the class code of every row of
    the source dataset (``-1``: not used for training).
    """

    def __init__(self, classifier: TeacherClassifier, labels: np.ndarray, config: ClassifierConfig,
                 total_steps: int, class_weight: np.ndarray | None = None):
        super().__init__()
        self.classifier = classifier
        self.config = config
        self.total_steps = max(total_steps, 1)
        self.register_buffer("labels", torch.as_tensor(np.asarray(labels, dtype=np.int64)), persistent=False)
        weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
        self.register_buffer("class_weight", weight, persistent=False)
        self.epoch_history: list[dict] = []
        self._sums: dict[str, list[float]] = {}
        self._epoch_start = 0.0

    def supervised_loss(self, batch: CellBatch) -> torch.Tensor:
        """Cross-entropy of the teacher-view predictions of labeled source cells."""
        logits = self.classifier(batch.teacher, batch.domains)
        return F.cross_entropy(logits, self.labels[batch.rows], weight=self.class_weight, ignore_index=-1,
                               label_smoothing=self.config.label_smoothing)

    def consistency_term(self, batch: CellBatch) -> torch.Tensor:
        """Consistency between two augmented views of unlabeled target cells (the second view is trained)."""
        first = self.classifier(batch.teacher, batch.domains)
        second = self.classifier(batch.student, batch.domains)
        return consistency_loss(first, second, self.config.sharpen_temperature,
                                self.config.consistency_min_confidence)

    def training_step(self, batch: dict[str, CellBatch], batch_idx: int) -> torch.Tensor:
        source = batch["source"]
        ce = self.supervised_loss(source)
        loss = ce
        parts = {"ce": ce}
        target = batch.get("target")
        if target is not None and self.config.consistency_weight > 0:
            cons = self.consistency_term(target)
            loss = ce + self.config.consistency_weight * cons
            parts["consistency"] = cons
        parts["loss"] = loss
        for k, v in parts.items():
            self._sums.setdefault(k, []).append(float(v.detach()))
        if self._trainer is not None:  # also callable directly, outside a Trainer
            self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=source.n_cells)
        return loss

    def on_train_epoch_start(self) -> None:
        self._sums = {}
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        entry = {"epoch": int(self.current_epoch), **{k: float(np.mean(v)) for k, v in self._sums.items()},
                 "seconds": time.perf_counter() - self._epoch_start}
        self.epoch_history.append(entry)

    def transfer_batch_to_device(self, batch: dict[str, CellBatch], device: torch.device,
                                 dataloader_idx: int) -> dict[str, CellBatch]:
        return {k: v.to(device) for k, v in batch.items()}

    def configure_optimizers(self):  # noqa: ANN201 - Lightning signature
        opt = torch.optim.Adam(self.classifier.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        end = self.config.lr_end_factor
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 1.0 - (1.0 - end) * min(step, self.total_steps) / self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit_classifier_network(classifier: TeacherClassifier, source: CellMatrix, source_rows: np.ndarray,
                           labels: np.ndarray, config: ClassifierConfig, target: CellMatrix | None = None,
                           target_rows: np.ndarray | None = None) -> list[dict]:
    """Fine-tune ``classifier`` in place; return the per-epoch history (mean ``loss``, ``ce``, ``consistency``).

    Parameters
    ----------
    classifier
        Teacher + head; its DSBN must already have a slot for every source and target domain.
    source, source_rows, labels
        Labeled cells: the rows of ``source`` to train on, and the class code of every row of ``source``.
    config
        Settings.
    target, target_rows
        Unlabeled target cells for domain adaptation (all rows when ``target_rows`` is ``None``).
    """
    need = int(source.domains.max()) + 1
    if target is not None:
        need = max(need, int(target.domains.max()) + 1)
    if classifier.n_domains < need:
        raise ValueError(f"the classifier has {classifier.n_domains} BN domains but the cells use {need}")
    loaders = {"source": rows_loader(source, source_rows, config, config.seed)}
    if target is not None:
        rows = np.arange(target.n_cells) if target_rows is None else np.asarray(target_rows, dtype=np.int64)
        loaders["target"] = rows_loader(target, rows, config, config.seed + 1)
    steps = max(len(dl) for dl in loaders.values()) * config.epochs
    weight = class_weights(labels[source_rows], classifier.n_classes) if config.class_balanced else None
    plan = ClassifierPlan(classifier, labels, config, steps, weight)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    show_bar, callbacks = progress_callbacks(config.progress, "fine-tuning")
    trainer = L.Trainer(max_epochs=config.epochs, accelerator=_ACCELERATORS.get(config.device, config.device),
                        devices=1, precision=config.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=show_bar, enable_model_summary=False, callbacks=callbacks,
                        use_distributed_sampler=False, num_sanity_val_steps=0, default_root_dir=os.getcwd())
    with quiet_third_party():
        trainer.fit(plan, train_dataloaders=loaders)
    classifier.cpu()
    recalibrate_norms(classifier, source, np.asarray(source_rows), device=config.device)
    if target is not None:
        recalibrate_norms(classifier, target, None if target_rows is None else np.asarray(target_rows),
                          device=config.device)
    return plan.epoch_history


@torch.no_grad()
def recalibrate_norms(classifier: TeacherClassifier, cells: CellMatrix, rows: np.ndarray | None = None,
                      batch_size: int = 1024, device: str = "auto") -> None:
    """Set the DSBN statistics of the domains of ``rows`` to their exact values under the final weights (in place).

    Running averages lag behind weights that move quickly during fine-tuning;
    exact statistics from forward passes (no gradient) remove the mismatch
    between training-mode and inference-mode normalization.
    """
    dev = resolve_device(device)
    rows = np.arange(cells.n_cells) if rows is None else np.asarray(rows, dtype=np.int64)
    norm = classifier.tail.norm
    norm.start_adapting(sorted(set(cells.domains[rows].tolist())))
    was_training = classifier.training
    classifier.to(dev).eval()
    for part in source_batches(cells.domains[rows], batch_size, shuffle=False):
        batch = cells.batch(rows[part]).to(dev)
        classifier.features(batch.teacher, batch.domains)
    norm.finish_adapting()
    classifier.cpu().train(was_training)


@torch.no_grad()
def adapt_classifier_norms(classifier: TeacherClassifier, cells: CellMatrix, domains: list[int],
                           batch_size: int = 1024, device: str = "auto") -> TeacherClassifier:
    """A copy of ``classifier`` whose DSBN has statistics re-estimated (AdaBN) for the new ``domains``."""
    dev = resolve_device(device)
    net = with_new_domains(classifier, domains)
    new = sorted(set(int(d) for d in domains))
    norm = net.tail.norm
    norm.start_adapting(new)
    net = net.to(dev).eval()
    mask = np.isin(cells.domains, new)
    selected = np.flatnonzero(mask)
    for rows in source_batches(cells.domains[mask], batch_size, shuffle=False):
        batch = cells.batch(selected[rows]).to(dev)
        net.features(batch.teacher, batch.domains)
    norm.finish_adapting()
    return net.cpu()


def classifier_hidden_states(classifier: TeacherClassifier, cells: CellMatrix, rows: np.ndarray,
                             batch_size: int = 1024, device: str = "auto") -> np.ndarray:
    """The pooled hidden vectors before the DSBN tail, ``(len(rows), dim)`` float32, of ``rows`` in increasing
    order (:func:`~scconcerto.train.runner.pooled_hidden_states`)."""
    return pooled_hidden_states(classifier, classifier.hidden, classifier.tail.norm.num_features, cells, rows,
                                batch_size, device)


def outputs_of_hidden(classifier: TeacherClassifier, hidden: np.ndarray, domains: np.ndarray,
                      batch_size: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Logits and teacher features (float32) of pooled hidden vectors (:func:`classifier_hidden_states`) of
    ``domains``, in eval mode on the CPU."""
    def logits_and_features(h: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = classifier.tail(h, d)
        return classifier.head(features), features

    logits, features = map_hidden(classifier, logits_and_features,
                                  (classifier.n_classes, classifier.tail.dense.out_features), hidden, domains,
                                  batch_size)
    return logits, features


@torch.no_grad()
def classifier_outputs(classifier: TeacherClassifier, cells: CellMatrix, rows: np.ndarray | None = None,
                       batch_size: int = 1024, device: str = "auto", adapt_domains: list[int] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(n_rows, n_classes)`` and teacher features ``(n_rows, out_dim)`` (float32) of ``rows``.

    Eval mode, every expressed gene (default rows: all cells). Domains listed in
    ``adapt_domains`` get AdaBN statistics on a copy first; ``classifier`` is not changed.
    """
    dev = resolve_device(device)
    rows = np.arange(cells.n_cells) if rows is None else np.asarray(rows, dtype=np.int64)
    net = adapt_classifier_norms(classifier, cells, adapt_domains, batch_size, device) if adapt_domains else classifier
    was_training = net.training
    net = net.to(dev).eval()
    logits = np.empty((rows.size, net.n_classes), dtype=np.float32)
    features = np.empty((rows.size, net.tail.dense.out_features), dtype=np.float32)
    for part in source_batches(cells.domains[rows], batch_size, shuffle=False):
        batch = cells.batch(rows[part]).to(dev)
        f = net.features(batch.teacher, batch.domains)
        logits[part] = net.head(f).float().cpu().numpy()
        features[part] = f.float().cpu().numpy()
    net.cpu().train(was_training)
    return logits, features


def classifier_logits(classifier: TeacherClassifier, cells: CellMatrix, rows: np.ndarray | None = None,
                      batch_size: int = 1024, device: str = "auto", adapt_domains: list[int] | None = None
                      ) -> np.ndarray:
    """Logits ``(n_rows, n_classes)`` float32 of ``rows`` (see :func:`classifier_outputs`)."""
    return classifier_outputs(classifier, cells, rows, batch_size, device, adapt_domains)[0]
