"""Benchmark runner: scConcerto and its peers on the same splits and genes, in one run.

Usage::

    python -m benchmarks.run --data-dir ../shared/data --jobs 2 --speed-sizes 10000   # benchmarks/report/
    python -m benchmarks.run --smoke --out /tmp/bench --methods scconcerto,pca_knn   # CI smoke run

Writes ``<task>.json`` and ``<task>.md`` per task, ``figures/*.png`` and ``SUMMARY.md`` into ``--out``.
Tasks whose data are absent are skipped with a message; methods whose packages are not installed
(``pip install -e '.[peers]'``) are skipped too. ``--jobs N`` runs independent task groups in N
processes at once (label transfer | integration + clustering | unseen type + over-correction +
imputation | speed, whose runs are separate processes anyway). ``--threads`` (default 1) caps the
CPU threads of every process, methods alike.
"""

from __future__ import annotations

import argparse
import contextlib
import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from . import report
from .peers import REGISTRY, available_methods, is_available
from .tasks import (clustering, cross_species, imputation, integration, label_transfer, overcorrection, speed,
                    unseen, unsupervised)
from .tasks.base import Context, TaskResult, peak_rss_mb

TASKS = {"label_transfer": label_transfer.run, "unseen_type": unseen.run, "integration": integration.run,
         "clustering": clustering.run, "overcorrection": overcorrection.run, "imputation": imputation.run,
         "speed": speed.run, "cross_species": cross_species.run, "unsupervised": unsupervised.run}
#: Extra tables a task writes besides its own (``--summary-only`` reads them back too).
SECONDARY = {"integration": ("integration_scib_metrics",)}
#: Tasks that share fitted embeddings (one cache) stay in one process under ``--jobs``.
GROUPS = (("label_transfer", "cross_species"), ("integration", "clustering"),
          ("unseen_type", "overcorrection", "imputation"), ("speed",), ("unsupervised",))

log = logging.getLogger("benchmarks")
EPOCHS_DEFAULT = ("each method's default (scConcerto: the package default by data size; scANVI/scVI: "
                  "a CPU budget of cell passes, see the epochs column)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=os.environ.get("SCCONCERTO_DATA"),
                   help="folder of the real data sets (default: $SCCONCERTO_DATA)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/report"),
                   help="output folder (default: benchmarks/report, the committed report)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of: {', '.join(TASKS)}")
    p.add_argument("--methods", default=None, help=f"comma-separated, of: {', '.join(REGISTRY)} "
                                                   "(default: all installed)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the trained methods (default: their own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny simulated data instead of the real data sets")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--speed-sizes", default=None,
                   help="reference sizes of the speed task, comma-separated (default 10000,100000,1000000)")
    p.add_argument("--speed-cap", type=float, default=None,
                   help=f"time cap (s) per method and size in the speed task (default {speed.TIME_CAP_S})")
    p.add_argument("--no-scib-metrics", action="store_true",
                   help="skip the scib-metrics Benchmarker table (our own formulas are always computed)")
    p.add_argument("--jobs", type=int, default=1, help="task groups run at once in separate processes")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per process (torch, BLAS, OpenMP, numba) for every method (default 1: on "
                        "a small shared machine more threads spin-wait; torch at 2 threads cost 14x the CPU time "
                        "of 1 thread in scVI training here; 0: leave the libraries' defaults)")
    p.add_argument("--note", default=None,
                   help="text added under the summary's header (e.g. the runs a --summary-only summary gathers)")
    p.add_argument("--summary-only", action="store_true",
                   help="run nothing: rebuild SUMMARY.md from the <task>.json files already in --out")
    return p.parse_args(argv)


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "celltypist", "harmonypy",
                  "scanpy", "jax", "scib_metrics"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


@contextlib.contextmanager
def thread_settings_restored() -> Iterator[None]:
    """Give a caller in the same process (tests, notebooks) its thread variables and torch threads back."""
    import torch

    saved_env = {var: os.environ.get(var) for var in THREAD_VARIABLES}
    saved_torch = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_limits

        saved_pools = threadpool_limits(limits=None)  # records the current BLAS/OpenMP pools, changes nothing
    except ImportError:
        saved_pools = None
    try:
        yield
    finally:
        if saved_pools is not None:
            saved_pools.restore_original_limits()
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        torch.set_num_threads(saved_torch)


def limit_threads(n: int) -> None:
    """Use ``n`` CPU threads here and in every process started from now on (they inherit the variables);
    ``n <= 0`` leaves everything as it is."""
    if n <= 0:
        return
    for var in THREAD_VARIABLES:
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass


def _shown(argv: list[str]) -> list[str]:
    """The command line for the summary header, with the ``--note`` text (printed below it) left out."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            out.append("--note ...")
            skip = True
        elif arg.startswith("--note="):
            out.append("--note=...")
        else:
            out.append(arg)
    return out


def run_tasks(ctx: Context, tasks: list[str], threads: int | None = None) -> list[tuple[str, list[TaskResult], float]]:
    """Run ``tasks`` in order on one shared context; write each one's JSON and table as it finishes.

    Returns ``(task, results, wall seconds)`` per task (a task may return several tables).
    ``threads`` sets this process's thread count (worker processes); :func:`main` restores the caller's."""
    if threads is not None:
        _quiet_logs()
        limit_threads(threads)
    done = []
    for task in tasks:
        t0 = time.perf_counter()
        out = TASKS[task](ctx)
        results = out if isinstance(out, list) else [out]
        wall = time.perf_counter() - t0
        results[0].notes.append(f"task wall time {wall:.0f} s")
        for result in results:
            result.seed = ctx.seed
            report.write_task(ctx.out_dir, result)
        log.info("%s done in %.0f s", task, wall)
        done.append((task, results, wall))
    return done


def main(argv: list[str] | None = None) -> int:
    with thread_settings_restored():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    _quiet_logs()
    limit_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if unknown := [t for t in tasks if t not in TASKS]:
        print(f"error: unknown task(s) {unknown}; choose from {list(TASKS)}", file=sys.stderr)
        return 2
    methods = available_methods() if args.methods is None else [m.strip() for m in args.methods.split(",")]
    if unknown := [m for m in methods if m not in REGISTRY]:
        print(f"error: unknown method(s) {unknown}; choose from {list(REGISTRY)}", file=sys.stderr)
        return 2
    missing = [m for m in methods if not is_available(m)]
    methods = [m for m in methods if is_available(m)]
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(data_dir=args.data_dir, out_dir=args.out, methods=methods, epochs=args.epochs, seed=args.seed,
                  smoke=args.smoke, figures=not args.no_figures,
                  speed_sizes=tuple(int(n) for n in args.speed_sizes.split(",")) if args.speed_sizes else None,
                  speed_cap_s=args.speed_cap, scib_metrics=not args.no_scib_metrics)
    start = time.perf_counter()
    if args.summary_only:
        found = [(task, report.read_task(args.out, name)) for task in tasks
                 for name in (task, *SECONDARY.get(task, ()))]
        done = [(task, [r], 0.0) for task, r in found if r is not None]
    elif args.jobs <= 1:
        done = run_tasks(ctx, tasks)
    else:
        groups = [[t for t in group if t in tasks] for group in GROUPS]
        groups = [g for g in groups if g]
        threads = args.threads
        with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_tasks, ctx, group, threads) for group in groups]
            done = [item for f in futures for item in f.result()]
    by_task: dict[str, list[TaskResult]] = {}
    for task, task_results, _ in done:
        by_task.setdefault(task, []).extend(task_results)
    results: list[TaskResult] = [r for task in tasks for r in by_task.get(task, [])]
    wall = time.perf_counter() - start
    header = "\n".join([
        "# scConcerto benchmark summary", "",
        report.generated_line(),
        f"Command: `python -m benchmarks.run {' '.join(_shown(argv if argv is not None else sys.argv[1:]))}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU, shared with other jobs "
        "(timings are noisy)  ",
        f"Methods: {', '.join(methods)}" + (f" (not installed: {', '.join(missing)})" if missing else "") + "  ",
        f"Epochs: {args.epochs or EPOCHS_DEFAULT}; seed {args.seed}  ",
        *([f"Rebuilt from the <task>.json files in {args.out}; each task's wall time is in its notes.", ""]
          if args.summary_only else [
            f"Processes: {args.jobs} (task groups at once), {args.threads} CPU thread(s) each  ",
            f"Wall time: {wall:.0f} s; peak RSS {peak_rss_mb():.0f} MiB (this process), "
            f"{peak_rss_mb(children=True):.0f} MiB (largest child process)", ""]),
        *([args.note, ""] if args.note else [])])
    path = report.write_summary(args.out, results, header)
    print(f"wrote {path} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
