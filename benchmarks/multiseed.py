"""Run benchmark tasks for several seeds in one command and write their spread.

Usage::

    python -m benchmarks.multiseed --tasks cross_species --seeds 0,1,2 --data-dir ../shared/data \\
        --out benchmarks/results_cross_species

Runs ``python -m benchmarks.run`` once per seed (into ``OUT/seed_S``, the other options passed on;
``--jobs N``: N seeds at once in separate processes), then writes ``OUT/SEEDS_<task>.md`` per task (mean and standard deviation over the seeds per split and
method, and scConcerto against the best peer; :mod:`benchmarks.seeds`).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import sys
from pathlib import Path

from . import run, seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multiseed", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", required=True, help="comma-separated tasks (see benchmarks.run)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per seed)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once in separate processes")
    args, rest = p.parse_known_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    folders = [str(args.out / f"seed_{seed}") for seed in seed_list]
    commands = [["--tasks", ",".join(tasks), "--seed", str(seed), "--out", folder, *rest]
                for seed, folder in zip(seed_list, folders)]
    if args.jobs <= 1:
        codes = [run.main(c) for c in commands]
    else:
        with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            codes = list(pool.map(run.main, commands))
    if any(codes):
        return max(codes)
    from scconcerto._io import write_atomic_file

    for task in tasks:
        text = (f"# {task}: seeds {', '.join(map(str, seed_list))}\n\nCommand: `python -m benchmarks.multiseed "
                f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n" + seeds.render(task, seeds.gather(task, folders)))
        path = args.out / f"SEEDS_{task}.md"
        write_atomic_file(path, lambda target, text=text: target.write_text(text), overwrite=True)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
