"""Task 7: speed and memory on the package simulator. Each method builds a reference and maps a
query in its own fresh process (so the peak RSS is its own), under a time cap per run; the
ratios scConcerto / peer are reported per size."""

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
TIME_CAP_S = 1_800


def _one(method: str, n_ref: int, n_genes: int, epochs: int | None, seed: int, queue) -> None:
    """Child process: simulate, fit, map; put timings and this process's peak RSS on ``queue``."""
    import numpy as np

    from scconcerto.datasets import simulate

    from ..peers import make

    adata = simulate(n_cells=int(n_ref * 1.5), n_genes=n_genes, n_types=8, n_batches=3, seed=seed)
    is_query = (adata.obs["batch"] == "batch_2").to_numpy()
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    for col in ("cell_type", "batch"):
        ref.obs[col] = ref.obs[col].astype(str)
        query.obs[col] = query.obs[col].astype(str)
    m = make(method, epochs=epochs, seed=seed)
    t0 = time.perf_counter()
    m.fit(ref, "cell_type", "batch", True)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = m.map(query, "batch")
    map_s = time.perf_counter() - t0
    acc = float(np.mean(out.labels == query.obs["cell_type"].to_numpy()))
    queue.put({"n_ref": ref.n_obs, "n_query": query.n_obs, "fit_s": fit_s, "map_s": map_s, "acc": acc,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def measure(method: str, n_ref: int, n_genes: int, epochs: int | None, seed: int, cap_s: float) -> dict:
    """Run one method at one size in a spawned process; a run past ``cap_s`` is stopped and reported."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(method, n_ref, n_genes, epochs, seed, queue))
    proc.start()
    proc.join(cap_s)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return {"error": f"over the {cap_s:.0f} s cap"}
    if queue.empty():
        return {"error": f"exited with code {proc.exitcode}"}
    return queue.get()


def run(ctx: Context, sizes: tuple[int, ...] | None = None) -> TaskResult:
    """Time every method at every size; add scConcerto / peer ratios."""
    result = TaskResult("speed")
    sizes = sizes or ctx.speed_sizes or (SMOKE_SIZES if ctx.smoke else SIZES)
    n_genes = 200 if ctx.smoke else N_GENES
    for n in sizes:
        rows = []
        for method in ctx.methods:
            log.info("[speed] %s at %d reference cells", method, n)
            row = {"method": method, "n_cells": n, **measure(method, n, n_genes, ctx.epochs, ctx.seed, TIME_CAP_S)}
            log.info("  %s", row)
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
