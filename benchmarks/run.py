"""Benchmark runner: scConcerto and its peers on the same splits and genes, in one run.

Usage::

    python -m benchmarks.run --data-dir ../shared/data --out benchmarks/results/
    python -m benchmarks.run --smoke --out /tmp/bench --methods scconcerto,pca_knn   # CI smoke run

Writes ``<task>.json`` and ``<task>.md`` per task, ``figures/*.png`` and ``SUMMARY.md`` into ``--out``.
Tasks whose data are absent are skipped with a message; methods whose packages are not installed
(``pip install -e '.[peers]'``) are skipped too.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

from . import report
from .peers import REGISTRY, available_methods, is_available
from .tasks import clustering, integration, label_transfer, overcorrection, speed, unseen
from .tasks.base import Context, TaskResult, peak_rss_mb

TASKS = {"label_transfer": label_transfer.run, "unseen_type": unseen.run, "integration": integration.run,
         "clustering": clustering.run, "overcorrection": overcorrection.run, "speed": speed.run}

log = logging.getLogger("benchmarks")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=os.environ.get("SCCONCERTO_DATA"),
                   help="folder of the real data sets (default: $SCCONCERTO_DATA)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of: {', '.join(TASKS)}")
    p.add_argument("--methods", default=None, help=f"comma-separated, of: {', '.join(REGISTRY)} "
                                                   "(default: all installed)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the trained methods (default: their own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny simulated data instead of the real data sets")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--speed-sizes", default=None,
                   help="reference sizes of the speed task, comma-separated (default 10000,100000)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lightning", "lightning.pytorch", "scvi", "celltypist", "harmonypy", "scanpy"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
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
                  speed_sizes=tuple(int(n) for n in args.speed_sizes.split(",")) if args.speed_sizes else None)
    start = time.perf_counter()
    results: list[TaskResult] = []
    for task in tasks:
        t0 = time.perf_counter()
        result = TASKS[task](ctx)
        result.notes.append(f"task wall time {time.perf_counter() - t0:.0f} s")
        report.write_task(args.out, result)
        results.append(result)
        log.info("%s done in %.0f s", task, time.perf_counter() - t0)
    wall = time.perf_counter() - start
    header = "\n".join([
        "# scConcerto benchmark summary", "",
        f"Command: `python -m benchmarks.run {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU, shared with other jobs "
        "(timings are noisy)  ",
        f"Methods: {', '.join(methods)}" + (f" (not installed: {', '.join(missing)})" if missing else "") + "  ",
        f"Epochs: {args.epochs or 'each method default'}; seed {args.seed}  ",
        f"Wall time: {wall:.0f} s; peak RSS {peak_rss_mb():.0f} MiB", ""])
    path = report.write_summary(args.out, results, header)
    print(f"wrote {path} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
