"""The CPUs this process may use (its affinity mask, which batch schedulers set) and the torch device it runs on."""

from __future__ import annotations

import os

import torch

from ._errors import InputError


def available_cpus(cap: int | None = None) -> int:
    """CPUs this process may run on (``os.sched_getaffinity``, else ``os.cpu_count``), at most ``cap``."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n if cap is None else min(n, cap))


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for ``device`` (``"auto"`` picks CUDA when available; ``"gpu"`` means CUDA).

    An unknown name, or a device this machine lacks, is an :class:`~scconcerto.InputError`.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device("cuda" if device == "gpu" else device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"Unknown device {device!r}: use auto, cpu, cuda (cuda:N for one GPU) or mps.")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"The device {device!r} is not available: torch sees {torch.cuda.device_count()} CUDA "
                         f"GPU(s){'' if torch.cuda.is_available() else ' (CUDA is not available to this torch build)'}. "
                         "Use --device cpu, or auto to take a GPU only when there is one.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"The device {device!r} is not available on this machine; use --device cpu or auto.")
    return dev
