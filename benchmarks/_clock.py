"""Process clocks the benchmarks read (standard library only: the scale benchmark's phases import it first)."""

from __future__ import annotations

import resource


def cpu_seconds() -> float:
    """CPU time this process has used (all threads): a load-independent hint of the work done."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is in KiB on Linux
