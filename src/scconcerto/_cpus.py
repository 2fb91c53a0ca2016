"""How many CPUs this process may use (its affinity mask, which batch schedulers set)."""

from __future__ import annotations

import os


def available_cpus(cap: int | None = None) -> int:
    """CPUs this process may run on (``os.sched_getaffinity``, else ``os.cpu_count``), at most ``cap``."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n if cap is None else min(n, cap))
