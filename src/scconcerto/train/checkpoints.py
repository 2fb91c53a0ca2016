"""Training checkpoints: written atomically next to their final name, read without running pickled code, and
resumed only by the run that wrote them.

Lightning writes a checkpoint to a temporary file in ``$TMPDIR`` and copies it
when that is another file system (a full disk left a truncated ``last.ckpt``);
:class:`SafeCheckpointIO` writes it in the checkpoint folder itself, flushes it
to disk and renames it into place. Loading uses ``torch.load(weights_only=True)``
whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says. :func:`check_resumable` reads
the checkpoint before training and refuses one written by a run with other
settings, another network or other data, with one paragraph saying what differs.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .._errors import InputError
from .._io import write_atomic_file
from .config import TrainConfig

log = logging.getLogger("scconcerto")

RUN_KEY = "scconcerto_run"
#: Settings that may change between a run and its resumption (where and how it runs, not what it computes).
RUNTIME_SETTINGS = ("device", "strategy", "precision", "num_workers", "progress")


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """A checkpoint's content, loaded without unpickling code; a damaged file is an :class:`InputError`."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"The checkpoint {str(path)!r} does not exist.") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, zipfile.BadZipFile,
            AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"The checkpoint {str(path)!r} cannot be read safely ({first[:300]}): it is truncated, "
                         "damaged, or holds more than tensors and plain values. Delete it to train from the start, "
                         "or pass another --checkpoint-dir.") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise InputError(f"{str(path)!r} is not a training checkpoint written by scConcerto. Delete it to train from "
                         "the start, or pass another --checkpoint-dir.")
    return ckpt


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, written atomically in the checkpoint's own folder and read with
    ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # serialized first: a full disk is then an OSError of the write, not torch's
        torch.save(checkpoint, buffer)  # RuntimeError from inside its zip writer

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())

        write_atomic_file(path, write, overwrite=True)

    def load_checkpoint(self, path: Any, map_location: Callable | Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location or "cpu")


class RunRecord(L.Callback):
    """Stores the run's settings and data size in every checkpoint, for :func:`check_resumable`."""

    def __init__(self, config: TrainConfig, n_cells: int):
        self.record = {"settings": _settings(config), "n_cells": int(n_cells)}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[RUN_KEY] = dict(self.record)


def _settings(config: TrainConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in RUNTIME_SETTINGS}


def check_resumable(path: Path, config: TrainConfig, n_cells: int, module: torch.nn.Module) -> None:
    """Refuse to resume from ``path`` unless it was written by this run: same settings (except where and how it
    runs), same number of cells, same network shapes."""
    ckpt = read_checkpoint(path)
    fix = ("Resume with the settings of the interrupted run, or delete the checkpoint (or pass another "
           "--checkpoint-dir) to train from the start.")
    record = ckpt.get(RUN_KEY) or {}
    before = record.get("settings")
    if isinstance(before, dict):
        now = _settings(config)
        differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if differ:
            changes = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in differ[:6])
            raise InputError(f"The checkpoint {str(path)!r} was written by a run with other settings ({changes}); "
                             f"resuming continues that run. {fix}")
    if record.get("n_cells") not in (None, int(n_cells)):
        raise InputError(f"The checkpoint {str(path)!r} was written while training on {record['n_cells']} cells, "
                         f"this run has {n_cells}: it belongs to other data. {fix}")
    state = ckpt["state_dict"]
    expected = module.state_dict()
    bad = sorted(k for k in set(state) | set(expected)
                 if k not in state or k not in expected or tuple(state[k].shape) != tuple(expected[k].shape))
    if bad:
        raise InputError(f"The checkpoint {str(path)!r} holds a network of other shapes than this run's (e.g. "
                         f"{bad[0]}): it belongs to another model or other data. {fix}")
