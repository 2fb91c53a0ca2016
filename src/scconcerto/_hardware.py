"""The CPUs this process may use (its affinity mask, which batch schedulers set) and the torch device it runs on."""

from __future__ import annotations

import os

import torch


def available_cpus(cap: int | None = None) -> int:
    """CPUs this process may run on (``os.sched_getaffinity``, else ``os.cpu_count``), at most ``cap``."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n if cap is None else min(n, cap))


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for ``device`` (``"auto"`` picks CUDA when available; ``"gpu"`` means CUDA)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if device == "gpu" else device)
