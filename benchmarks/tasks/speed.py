"""Task 7: speed and memory on the package simulator. Each method builds a reference and maps a
query in its own fresh process (so the peak RSS is its own), under a time cap per run (a run past
the cap is stopped and recorded as "did not finish within cap"; a method whose previous, smaller
size extrapolates linearly to more than 1.5 caps is not started at the larger size, recorded the
same way with the linear extrapolation); the ratios scConcerto / peer are reported per size."""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import time

from .base import Context, TaskResult

log = logging.getLogger("benchmarks")

#: Reference sizes of the full run (query = one extra simulated batch of ``QUERY_FRACTION`` of it).
SIZES = (10_000, 100_000)
SMOKE_SIZES = (300,)
N_GENES = 2_000
TIME_CAP_S = 1_200
#: A size is not started when the linear extrapolation from the previous size exceeds this many caps
#: (a margin for fixed start-up costs that do not grow with the cells).
SKIP_MARGIN = 1.5
#: Limit on a child's imports and data simulation (not part of the timed cap).
STARTUP_CAP_S = 900


def own_peak_rss_mb() -> float:
    """This process's own peak resident memory (MiB): ``VmHWM``, which starts afresh at ``exec``; unlike
    ``ru_maxrss``, which Linux keeps across ``exec`` and so would report the forking parent's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one(method: str, n_ref: int, n_genes: int, epochs: int | None, seed: int, queue) -> None:
    """Child process: simulate, fit, map; put timings and this process's peak RSS on ``queue``."""
    import numpy as np

    from scconcerto.datasets import simulate

    from ..peers import make
    from ..peers.base import timed_fit_map

    adata = simulate(n_cells=int(n_ref * 1.5), n_genes=n_genes, n_types=8, n_batches=3, seed=seed)
    is_query = (adata.obs["batch"] == "batch_2").to_numpy()
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    for col in ("cell_type", "batch"):
        ref.obs[col] = ref.obs[col].astype(str)
        query.obs[col] = query.obs[col].astype(str)
    m = make(method, epochs=epochs, seed=seed)
    if method == "celltypist":  # its first import is slow; not part of the reference build
        import celltypist  # noqa: F401
    elif method == "scanvi":
        import scvi  # noqa: F401
    elif method == "symphony":
        import symphonypy  # noqa: F401
    queue.put({"ready": True})  # the cap starts now: imports and simulation are not timed
    out, fit_s, map_s = timed_fit_map(m, ref, query, "cell_type", "batch", True)
    acc = float(np.mean(out.labels == query.obs["cell_type"].to_numpy()))
    row = {"n_ref": ref.n_obs, "n_query": query.n_obs, "fit_s": fit_s, "map_s": map_s, "acc": acc,
           "peak_rss_mb": own_peak_rss_mb()}
    if (epochs := m.epochs_text()) is not None:
        row["epochs"] = epochs
    queue.put(row)


def _wait(queue, proc, timeout: float) -> dict | None:
    """The next message of ``proc`` within ``timeout`` seconds; ``None`` when it timed out or died."""
    import queue as queue_module

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            return queue.get(timeout=1.0)
        except queue_module.Empty:
            if not proc.is_alive():
                try:  # it may have put its message just before exiting
                    return queue.get(timeout=1.0)
                except queue_module.Empty:
                    return None
    return None


def measure(method: str, n_ref: int, n_genes: int, epochs: int | None, seed: int, cap_s: float) -> dict:
    """Run one method at one size in a spawned process; a run past ``cap_s`` (counted from the end of the
    child's imports and data simulation, themselves limited to ``STARTUP_CAP_S``) is stopped and reported."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(method, n_ref, n_genes, epochs, seed, queue))
    proc.start()
    ready = _wait(queue, proc, STARTUP_CAP_S)
    result = None if ready is None else _wait(queue, proc, cap_s)
    if result is None:
        if proc.is_alive():
            proc.terminate()
            proc.join()
            return {"cap_s": cap_s, "error": f"did not finish within cap ({cap_s:.0f} s)"}
        proc.join()
        return {"error": f"exited with code {proc.exitcode}"}
    proc.join()
    return result


def predicted_s(previous: dict | None, n: int) -> float | None:
    """Linear extrapolation of a method's fit + map time from its run at a smaller size (``None``
    without one); a run that hit the cap there is predicted at least cap x the size ratio."""
    if previous is None:
        return None
    scale = n / previous["n_cells"]
    if "fit_s" in previous:
        return (previous["fit_s"] + previous["map_s"]) * scale
    if "cap_s" in previous:
        return previous["cap_s"] * scale
    return None


def run(ctx: Context, sizes: tuple[int, ...] | None = None) -> TaskResult:
    """Time every method at every size, smallest first; add scConcerto / peer ratios."""
    result = TaskResult("speed")
    sizes = sorted(sizes or ctx.speed_sizes or (SMOKE_SIZES if ctx.smoke else SIZES))
    n_genes = 200 if ctx.smoke else N_GENES
    cap = ctx.speed_cap_s or TIME_CAP_S
    result.notes.append(f"time cap {cap:.0f} s per method and size (reference build + query mapping)")
    last: dict[str, dict] = {}
    for n in sizes:
        rows = []
        for method in ctx.methods:
            expected = predicted_s(last.get(method), n)
            if expected is not None and expected > SKIP_MARGIN * cap:
                row = {"method": method, "n_cells": n, "cap_s": cap,
                       "error": f"did not finish within cap: not started, the {last[method]['n_cells']}-cell run "
                                f"extrapolates to ~{expected:.0f} s > {SKIP_MARGIN} x {cap:.0f} s"}
            else:
                log.info("[speed] %s at %d reference cells", method, n)
                row = {"method": method, "n_cells": n, **measure(method, n, n_genes, ctx.epochs, ctx.seed, cap)}
            log.info("  %s", row)
            last[method] = row
            rows.append(row)
        ours = next((r for r in rows if r["method"] == "scconcerto" and "fit_s" in r), None)
        for r in rows:
            if ours is not None and "fit_s" in r and r is not ours:
                r["fit_ratio_ours_over_peer"] = ours["fit_s"] / r["fit_s"]
                r["map_ratio_ours_over_peer"] = ours["map_s"] / r["map_s"]
        result.rows.extend(rows)
    if ctx.figures and result.rows:
        from ..plots import speed_plot

        result.figures.append(speed_plot(ctx.out_dir, result.rows))
    return result
