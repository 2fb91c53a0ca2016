"""Seed spread: one task's scores over several benchmark runs with different seeds, and scConcerto
against the best peer on each split by their means.

Usage::

    python -m benchmarks.seeds --task label_transfer benchmarks/report /tmp/seed1 /tmp/seed2 --out SEEDS.md

Each folder holds a ``<task>.json`` written by ``python -m benchmarks.run --seed S``; its seed is read
from the file, or given as ``S=folder`` (files written before the seed was recorded). Folders of the same
seed are merged (e.g. one run per group of methods); a (split, method) pair measured twice for one seed
is an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from . import report
from .tasks.data import role

OURS = "scconcerto"


def gather(task: str, runs: list[str]) -> pd.DataFrame:
    """One row per (seed, split, method) from the ``<task>.json`` of each run folder."""
    frames = []
    for run in runs:
        given, _, folder = run.rpartition("=") if "=" in run else (None, "", run)
        result = report.read_task(Path(folder), task)
        if result is None:
            raise FileNotFoundError(f"{folder} has no {task}.json: run `python -m benchmarks.run --tasks {task} "
                                    f"--out {folder}` first.")
        seed = int(given) if given is not None else result.seed
        if seed is None:
            raise ValueError(f"{folder}/{task}.json does not record its seed: pass it as SEED={folder}.")
        df = pd.DataFrame([r for r in result.rows if "error" not in r])
        frames.append(df.assign(seed=seed))
    rows = pd.concat(frames, ignore_index=True)
    key = rows.columns[0]  # "split" or "dataset" (the task's first column)
    dup = rows.duplicated(["seed", key, "method"])
    if dup.any():
        first = rows[dup].iloc[0]
        raise ValueError(f"{first[key]} / {first['method']} appears twice for seed {first['seed']}.")
    return rows


def spread(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1; 0 for one seed) and number of seeds per (split, method)."""
    key = rows.columns[0]
    grouped = rows.groupby([key, "method"], sort=False)[metrics]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).fillna(0.0).add_suffix("_sd"))
    out = out[[f"{m}_{stat}" for m in metrics for stat in ("mean", "sd")]]
    out["seeds"] = grouped.size()
    return out.reset_index()


def against_best_peer(table: pd.DataFrame, metric: str, ours: str = OURS) -> pd.DataFrame:
    """Per split: our mean of ``metric``, the best other method's mean and name, and the difference."""
    key = table.columns[0]
    col = f"{metric}_mean"
    out = []
    for split, part in table.groupby(key, sort=False):
        mine = part[part["method"] == ours]
        peers = part[part["method"] != ours].dropna(subset=[col])
        if mine.empty or peers.empty:
            continue
        best = peers.loc[peers[col].idxmax()]
        out.append({key: split, ours: float(mine[col].iloc[0]), "best_peer": best["method"],
                    "best_peer_score": float(best[col]), "difference": float(mine[col].iloc[0] - best[col])})
    return pd.DataFrame(out)


def by_role(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each method's mean of ``metric`` over the splits of each role (development, test), and how many splits.

    Only splits that every method in the table scored enter, so the means compare like with like.
    """
    key = table.columns[0]
    col = f"{metric}_mean"
    wide = table.pivot_table(index=key, columns="method", values=col, sort=False).dropna()
    if wide.empty:
        return pd.DataFrame()
    wide.insert(0, "role", [role(str(s)) for s in wide.index])
    out = wide.groupby("role", sort=True).mean()
    out.insert(0, "splits", wide.groupby("role", sort=True).size())
    return out.reset_index()


def render(task: str, rows: pd.DataFrame) -> str:
    """The markdown: the spread table with each split's role and, per headline metric, each method's mean over
    the development and the test splits, and scConcerto against the best peer on each split."""
    metrics = [m for m in report.HEADLINE.get(task, []) if m in rows.columns]
    table = spread(rows, metrics)
    key = table.columns[0]
    table.insert(1, "role", [role(str(s)) for s in table[key]])
    seeds = sorted(rows["seed"].unique())
    lines = [f"## {task}: seeds {', '.join(map(str, seeds))}", "", report.markdown(table), ""]
    plain = table.drop(columns="role")
    for metric in metrics:
        means = by_role(plain, metric)
        if not means.empty:
            lines += [f"### {metric}: each method's mean over the splits of each role (split means over seeds)", "",
                      report.markdown(means), ""]
        vs = against_best_peer(plain, metric)
        if vs.empty:
            continue
        vs.insert(1, "role", [role(str(s)) for s in vs[key]])
        ahead = int((vs["difference"] >= 0).sum())
        lines += [f"### {metric}: {OURS} against the best peer on each split (means over seeds)", "",
                  report.markdown(vs), "",
                  f"{OURS} at least the best peer on {ahead} of {len(vs)} splits.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.seeds", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (or SEED=folder)")
    p.add_argument("--task", default="label_transfer")
    p.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print)")
    args = p.parse_args(argv)
    try:
        text = render(args.task, gather(args.task, args.runs))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out is None:
        print(text)
    else:
        from scconcerto._io import write_atomic_file

        write_atomic_file(args.out, lambda path: path.write_text(text), overwrite=True)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
