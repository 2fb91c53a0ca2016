"""Run benchmark tasks for several seeds in one command and write their spread in one report.

Usage (the command that writes ``benchmarks/SEEDS.md``)::

    python -m benchmarks.multiseed --tasks label_transfer,unseen_type --seeds 0,1,2 \\
        --data-dir ../shared/data --jobs 2 --no-figures --out benchmarks/results/seeds --report benchmarks/SEEDS.md

Runs ``python -m benchmarks.run`` once per seed, every method in the same run (into ``OUT/seed_S``, the
other options passed on; ``--jobs N``: N seeds at once in separate processes), then writes one report
(``--report``, default ``OUT/SEEDS.md``) headed with its date, commit and command: per task the mean and
standard deviation over the seeds per split and method, each split's role (development or test), each
method's mean per role, and scConcerto against the best peer (:mod:`benchmarks.seeds`).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

from . import report, run, seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multiseed", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", required=True, help="comma-separated tasks (see benchmarks.run)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per seed)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once in separate processes")
    p.add_argument("--report", type=Path, default=None, help="markdown report to write (default: OUT/SEEDS.md)")
    args, rest = p.parse_known_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    folders = [str(args.out / f"seed_{seed}") for seed in seed_list]
    commands = [["--tasks", ",".join(tasks), "--seed", str(seed), "--out", folder, *rest]
                for seed, folder in zip(seed_list, folders)]
    start = time.perf_counter()
    if args.jobs <= 1:
        codes = [run.main(c) for c in commands]
    else:
        with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            codes = list(pool.map(run.main, commands))
    if any(codes):
        return max(codes)
    from scconcerto._io import write_atomic_file

    shown = " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        f"# Seed spread: {', '.join(tasks)}", "",
        report.generated_line(),
        f"Command: `python -m benchmarks.multiseed {shown}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU  ",
        f"Seeds: {', '.join(map(str, seed_list))}, every method in each seed's run; {args.jobs} seed(s) at once; "
        f"wall time {time.perf_counter() - start:.0f} s  ",
        "Roles: settings are chosen on development splits; test splits are only reported.", "",
        *[seeds.render(task, seeds.gather(task, folders)) for task in tasks]])
    path = args.report or args.out / "SEEDS.md"
    write_atomic_file(path, lambda target: target.write_text(text), overwrite=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
