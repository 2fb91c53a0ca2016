"""Task 7: speed and memory on the package simulator. Each method builds a reference and maps two
queries of an unseen batch (10k and 100k cells, fewer only when the simulation holds fewer) in its own
fresh process, so the peak RSS is its own (counted from the end of the data simulation: the method's
input data, its model and its work). Runs have a time cap (a run past it is stopped and recorded as
"did not finish within cap"). A method whose smaller sizes extrapolate linearly to more than 1.5 caps,
or to a peak RSS above ``MEMORY_FRACTION`` of this machine's memory, is not started at the larger size
and recorded with the extrapolation. The ratios scConcerto / peer are reported per size."""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import time

from .base import Context, TaskResult

log = logging.getLogger("benchmarks")

#: Reference sizes of the full run (query = one extra simulated batch of ``QUERY_FRACTION`` of it).
SIZES = (10_000, 100_000, 1_000_000)
#: Query sizes mapped at every reference size (cells of a batch the reference never saw).
QUERY_SIZES = (10_000, 100_000)
SMOKE_SIZES = (300,)
SMOKE_QUERY_SIZES = (50, 150)
N_GENES = 2_000
TIME_CAP_S = 1_800
#: A size is not started when the linear extrapolation from the previous size exceeds this many caps
#: (a margin for fixed start-up costs that do not grow with the cells).
SKIP_MARGIN = 1.5
#: A size is not started when its extrapolated peak RSS exceeds this share of the machine's memory (an
#: out-of-memory kill would take other processes with it).
MEMORY_FRACTION = 0.75
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


def size_name(n: int) -> str:
    """``10k`` for 10,000 cells, ``150`` for 150."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def reset_peak_rss() -> None:
    """Restart this process's ``VmHWM`` at its current RSS (Linux ``clear_refs``; a no-op elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def machine_memory_mb() -> float | None:
    """Total memory of this machine (MiB), ``None`` when unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            return int(meminfo.readline().split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None


def simulate_split(n_ref: int, n_genes: int, seed: int, query_sizes: tuple[int, ...] = QUERY_SIZES):
    """A reference of ``n_ref`` cells from batches 0 and 1, and nested queries (the first 10k, 100k, ...)
    of batch 2, from one seeded simulation large enough for both (batch 2 holds about a third of the cells)."""
    import gc

    import numpy as np

    from scconcerto.datasets import simulate

    n_total = int(np.ceil(max(n_ref * 1.65, 4 * max(query_sizes))))
    while True:  # batch shares are random (Dirichlet): simulate more until both parts are large enough
        adata = simulate(n_cells=n_total, n_genes=n_genes, n_types=8, n_batches=3, seed=seed)
        is_query = (adata.obs["batch"] == "batch_2").to_numpy()
        if (~is_query).sum() >= n_ref and is_query.sum() >= max(query_sizes):
            break
        n_total = int(n_total * 1.3)
    for col in ("cell_type", "batch"):
        adata.obs[col] = adata.obs[col].astype(str)
    ref_rows = np.flatnonzero(~is_query)
    ref_rows = np.sort(np.random.default_rng(seed).choice(ref_rows, size=n_ref, replace=False))
    query_rows = np.flatnonzero(is_query)
    ref = adata[ref_rows].copy()
    queries = [adata[query_rows[:n]].copy() for n in query_sizes]
    del adata
    gc.collect()
    return ref, queries


def _one(method: str, n_ref: int, n_genes: int, epochs: int | None, seed: int, queue,
         query_sizes: tuple[int, ...] = QUERY_SIZES) -> None:
    """Child process: simulate, fit, map each query; put timings and the peak RSS of the fit and the
    mappings on ``queue``."""
    import time

    import numpy as np

    from ..peers import make
    from ..peers.base import timed_fit_map

    ref, queries = simulate_split(n_ref, n_genes, seed, query_sizes)
    m = make(method, epochs=epochs, seed=seed)
    if method == "celltypist":  # its first import is slow; not part of the reference build
        import celltypist  # noqa: F401
    elif method == "scanvi":
        import scvi  # noqa: F401
    elif method == "symphony":
        import symphonypy  # noqa: F401
    reset_peak_rss()  # the simulation's own peak is not the method's
    queue.put({"ready": True})  # the cap starts now: imports and simulation are not timed
    out, fit_s, map_s, *_ = timed_fit_map(m, ref, queries[0], "cell_type", "batch", True)
    row = {"n_ref": ref.n_obs, "fit_s": fit_s}
    for size, query in zip(query_sizes, queries):
        if query is not queries[0]:
            t0 = time.perf_counter()
            out = m.map(query, "batch")
            map_s = time.perf_counter() - t0
        name = size_name(size)
        row[f"n_query_{name}"] = query.n_obs
        row[f"map_{name}_s"] = map_s
        row[f"acc_{name}"] = float(np.mean(out.labels == query.obs["cell_type"].to_numpy()))
    row["peak_rss_mb"] = own_peak_rss_mb()
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


def measure(method: str, n_ref: int, n_genes: int, epochs: int | None, seed: int, cap_s: float,
            query_sizes: tuple[int, ...] = QUERY_SIZES) -> dict:
    """Run one method at one size in a spawned process; a run past ``cap_s`` (counted from the end of the
    child's imports and data simulation, themselves limited to ``STARTUP_CAP_S``) is stopped and reported."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(method, n_ref, n_genes, epochs, seed, queue, query_sizes))
    proc.start()
    ready = _wait(queue, proc, STARTUP_CAP_S)
    result = None if ready is None else _wait(queue, proc, cap_s)
    if result is None:
        if proc.is_alive():
            proc.terminate()
            proc.join()
            return {"cap_s": cap_s, "error": f"did not finish within cap ({cap_s:.0f} s)"}
        proc.join()
        phase = "during the data simulation" if ready is None else "during the reference build or mapping"
        killed = " (SIGKILL: most likely the out-of-memory killer)" if proc.exitcode == -9 else ""
        return {"error": f"exited with code {proc.exitcode}{killed} {phase}"}
    proc.join()
    return result


def _run_s(row: dict) -> float:
    """Fit plus every mapping of a finished run."""
    return row["fit_s"] + sum(v for k, v in row.items() if k.startswith("map_") and k.endswith("_s"))


def predicted_s(previous: dict | None, n: int) -> float | None:
    """Linear extrapolation of a method's run time from its run at a smaller size (``None`` without
    one); a run that hit the cap there is predicted at least cap x the size ratio."""
    if previous is None:
        return None
    scale = n / previous["n_cells"]
    if "fit_s" in previous:
        return _run_s(previous) * scale
    if "cap_s" in previous:
        return previous["cap_s"] * scale
    return None


def predicted_rss_mb(runs: list[dict], n: int) -> float | None:
    """Peak RSS at ``n`` cells extrapolated along the line through the method's two largest finished
    runs; ``None`` with fewer (one run cannot tell the fixed costs, libraries and queries, from the
    per-cell ones: scANVI's 2.3 GB at 10k cells would predict 23 GB at 100k)."""
    done = sorted((r["n_cells"], r["peak_rss_mb"]) for r in runs if "peak_rss_mb" in r)
    if len(done) < 2:
        return None
    (n0, m0), (n1, m1) = done[-2:]
    return m1 + max(m1 - m0, 0.0) / (n1 - n0) * (n - n1)


def run(ctx: Context, sizes: tuple[int, ...] | None = None) -> TaskResult:
    """Time every method at every size, smallest first; add scConcerto / peer ratios."""
    result = TaskResult("speed")
    sizes = sorted(sizes or ctx.speed_sizes or (SMOKE_SIZES if ctx.smoke else SIZES))
    n_genes = 200 if ctx.smoke else N_GENES
    query_sizes = SMOKE_QUERY_SIZES if ctx.smoke else QUERY_SIZES
    cap = ctx.speed_cap_s or TIME_CAP_S
    result.notes.append(f"time cap {cap:.0f} s per method and size (reference build + query mapping)")
    result.notes.append(f"queries: the first {' and '.join(f'{q:,}' for q in query_sizes)} cells of an unseen "
                        "batch; peak RSS from the end of the data simulation (input data, model and work)")
    memory = machine_memory_mb()
    history: dict[str, list[dict]] = {m: [] for m in ctx.methods}
    for n in sizes:
        rows = []
        for method in ctx.methods:
            last = history[method][-1] if history[method] else None
            expected = predicted_s(last, n)
            rss = predicted_rss_mb(history[method], n)
            if expected is not None and expected > SKIP_MARGIN * cap:
                row = {"method": method, "n_cells": n, "cap_s": cap,
                       "error": f"did not finish within cap: not started, the {last['n_cells']}-cell run "
                                f"extrapolates to ~{expected:.0f} s > {SKIP_MARGIN} x {cap:.0f} s"}
            elif rss is not None and memory is not None and rss > MEMORY_FRACTION * memory:
                row = {"method": method, "n_cells": n,
                       "error": f"not started: peak RSS extrapolates to ~{rss / 1024:.0f} GB > {MEMORY_FRACTION:.0%} "
                                f"of this machine's {memory / 1024:.0f} GB"}
            else:
                log.info("[speed] %s at %d reference cells", method, n)
                row = {"method": method, "n_cells": n, **measure(method, n, n_genes, ctx.epochs, ctx.seed, cap,
                                                                  query_sizes)}
            log.info("  %s", row)
            history[method].append(row)
            rows.append(row)
        ours = next((r for r in rows if r["method"] == "scconcerto" and "fit_s" in r), None)
        for r in rows:
            if ours is not None and "fit_s" in r and r is not ours:
                r["fit_ratio_ours_over_peer"] = ours["fit_s"] / r["fit_s"]
                for key in [k for k in r if k.startswith("map_") and k.endswith("_s") and k in ours]:
                    r[f"{key[:-2]}_ratio_ours_over_peer"] = ours[key] / r[key]
        result.rows.extend(rows)
    if ctx.figures and result.rows:
        from ..plots import speed_plot

        result.figures.append(speed_plot(ctx.out_dir, result.rows))
    return result
