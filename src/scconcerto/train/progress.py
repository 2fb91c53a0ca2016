"""What training shows while it runs: a progress bar on standard error, or one log line per epoch.

Lightning's own bars write to standard output, where the command line prints
its JSON result; :class:`StderrProgressBar` draws the same tqdm bar on standard
error. Where no one watches (see :meth:`scconcerto.settings.show_progress`),
:class:`EpochLog` logs each epoch's losses at the ``info`` level instead.
"""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from .._settings import settings

log = logging.getLogger("scconcerto")


class StderrProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, drawn on standard error."""

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(desc=self.train_description, position=2 * self.process_position, disable=self.is_disabled,
                    leave=True, dynamic_ncols=True, file=sys.stderr, smoothing=0, bar_format=self.BAR_FORMAT)


class EpochLog(L.Callback):
    """Log one line per finished epoch (``info`` level): the epoch's mean losses and its duration.

    Reads the plan's ``epoch_history`` (filled by the plan at the end of each epoch), so an
    epoch's line is written when the next one starts, and the last one when training ends.
    """

    def __init__(self, what: str = "training") -> None:
        self.what = what
        self._logged = 0
        self._start = time.perf_counter()

    def _flush(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = getattr(pl_module, "epoch_history", [])
        while self._logged < len(history):
            entry = history[self._logged]
            losses = ", ".join(f"{k} {v:.4f}" for k, v in entry.items()
                               if k not in ("epoch", "seconds") and isinstance(v, float))
            seconds = entry.get("seconds", time.perf_counter() - self._start)
            log.info("%s epoch %d/%d: %s (%.1f s)", self.what, int(entry.get("epoch", self._logged)) + 1,
                     trainer.max_epochs, losses, seconds)
            self._logged += 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logged = len(getattr(pl_module, "epoch_history", []))  # a resumed run: earlier epochs are logged
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer, pl_module)
        self._start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer, pl_module)


def progress_callbacks(progress: bool | None, what: str = "training") -> tuple[bool, list[L.Callback]]:
    """Whether Lightning shows a bar, and the callbacks: our stderr bar, or the epoch log."""
    shown = settings.show_progress(progress)
    return shown, [StderrProgressBar() if shown else EpochLog(what)]
