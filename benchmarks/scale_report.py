"""The markdown results file of one ``benchmarks/scale.py run`` (its JSON records, in the order they ran).

``write_report(records, path)`` writes it; ``python benchmarks/scale.py report RUN.json --out FILE`` and
``run --report FILE`` call it. The file is headed with the date, the commit, the exact command and the machine;
its tables are built from the records alone, so every figure in it comes from that one run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Goals for the hard world at 100k reference cells (and above) on the 2-core machine (docs/scale.md).
BUILD_TARGET_SECONDS = 100.0
RSS_TARGET_GB = 3.0


def load_1min(uptime_line: str | None) -> float | None:
    """The 1-minute load average in an ``uptime`` line (``None`` when absent)."""
    match = re.search(r"load averages?:\s*([0-9.]+)", uptime_line or "")
    return float(match.group(1)) if match else None


def _num(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _load(record: dict) -> str:
    start, end = load_1min(record.get("uptime_start")), load_1min(record.get("uptime_end"))
    if start is None and end is None and record.get("load_average"):
        end = float(record["load_average"][0])
    return f"{_num(start, 2)} → {_num(end, 2)}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _details(r: dict) -> str:
    phase = r["phase"]
    if phase == "simulate":
        queries = ", ".join(f"{q:,}" for q in r.get("queries", []))
        return f"{r.get('n_ref', 0):,} reference cells, queries of {queries} cells; simulating {r.get('simulate_seconds')} s"
    if phase == "build":
        return (f"{r.get('n_cells', 0):,} cells, {r.get('genes', 0):,} genes, {r.get('epochs')} epochs "
                f"(s/epoch {r.get('seconds_per_epoch')}); train {r.get('train_seconds')} s, reference embedding and "
                f"mapping preparation {r.get('reference_embed_seconds')} s; IVF index for `map` {r.get('index_seconds')} s")
    if phase == "map":
        return (f"{r['n_query']:,} cells: embed {r.get('embed_seconds')} s, kNN + vote {r.get('knn_and_vote_seconds')} s; "
                f"IVF recall@5 {r.get('ivf_recall_at_5')}")
    if phase == "map_query":
        timings = sorted(((k, v) for k, v in (r.get("timings") or {}).items() if k != "total"),
                         key=lambda kv: -float(kv[1] or 0))[:3]
        parts = ", ".join(f"{k} {float(v):.1f} s" for k, v in timings)
        return f"{r['n_query']:,} cells, index {r.get('index')}; model load {r.get('model_load_seconds')} s; largest: {parts}"
    if phase == "peer":
        return f"{r['n_ref']:,} → {r['n_query']:,} cells: read {r.get('read_seconds')} s, map {r.get('map_seconds')} s"
    if phase == "converge":
        return f"held-out kNN accuracy per epoch {[c['query_knn_accuracy'] for c in r.get('curve', [])]}"
    return ""


#: How the report names the peers of ``benchmarks/peers``.
PEER_NAMES = {"celltypist": "CellTypist", "symphony": "Symphony", "pca_knn": "PCA + kNN", "scanvi": "scANVI"}


def _phase_name(r: dict) -> str:
    names = {"simulate": "simulate", "build": "scConcerto build (backed)", "map": "scConcerto `map` (streamed)",
             "map_query": "scConcerto `map_query`", "converge": "convergence probe"}
    return PEER_NAMES.get(r["method"], r["method"]) if r["phase"] == "peer" else names.get(r["phase"], r["phase"])


def _phase_cpu(r: dict) -> float | None:
    if r["phase"] == "peer":
        fit, mapped = r.get("fit_process_cpu_seconds"), r.get("map_process_cpu_seconds")
        return None if fit is None else fit + (mapped or 0.0)
    return r.get("process_cpu_seconds")


def _phase_seconds(r: dict) -> float | None:
    if r["phase"] == "build":
        return r.get("build_seconds")
    if r["phase"] == "peer":
        return r.get("fit_seconds", 0.0) + r.get("map_seconds", 0.0)
    return r.get("seconds")


def results_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The method table: build/fit wall and CPU seconds, peak RSS, held-out accuracy, macro-F1, map seconds."""
    queries = sorted({r["n_query"] for r in records if r["phase"] in ("map", "map_query", "peer")})
    header = ["method", "build / fit (s)", "build / fit CPU (s)", "peak RSS (GB)", "accuracy", "macro-F1",
              *(f"map {q:,} cells (s)" for q in queries)]
    rows = []
    for build in (r for r in records if r["phase"] == "build"):
        for phase, label in (("map_query", "scConcerto, `map_query` (as `scconcerto map`)"),
                             ("map", "scConcerto, streamed `map` (AdaBN + IVF vote)")):
            maps = {r["n_query"]: r for r in records if r["phase"] == phase}
            if not maps:
                continue
            first = maps[min(maps)]
            rows.append([label, _num(build.get("build_seconds")), _num(build.get("process_cpu_seconds")),
                         _num(build.get("peak_rss_gb"), 2), _num(first.get("accuracy"), 4),
                         _num(first.get("macro_f1"), 4), *(_num(maps[q]["seconds"], 1) if q in maps else "–"
                                                           for q in queries)])
    for peer in (r for r in records if r["phase"] == "peer"):
        rows.append([_phase_name(peer), _num(peer.get("fit_seconds")), _num(peer.get("fit_process_cpu_seconds")),
                     _num(peer.get("peak_rss_gb"), 2), _num(peer.get("accuracy"), 4), _num(peer.get("macro_f1"), 4),
                     *(_num(peer.get("map_seconds")) if q == peer["n_query"] else "–" for q in queries)])
    return header, rows


def phase_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per phase (each its own process): wall and CPU seconds, peak RSS, load, details."""
    header = ["phase", "wall (s)", "process CPU (s)", "peak RSS (GB)", "1-min load (start → end)", "details"]
    rows = [[_phase_name(r), _num(_phase_seconds(r)), _num(_phase_cpu(r)), _num(r.get("peak_rss_gb"), 2), _load(r),
             _details(r)] for r in records if r["phase"] != "run"]
    return header, rows


def target_lines(records: list[dict]) -> list[str]:
    """Whether the goals hold in this run (with a build of at least 100k cells and a CellTypist fit)."""
    build = next((r for r in records if r["phase"] == "build" and r.get("n_cells", 0) >= 100_000), None)
    mapped = [r for r in records if r["phase"] == "map_query"]
    celltypist = next((r for r in records if r["phase"] == "peer" and r["method"] == "celltypist"), None)
    if build is None or not mapped or celltypist is None:
        return []
    first = min(mapped, key=lambda r: r["n_query"])

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return [
        f"- Held-out-batch accuracy ≥ CellTypist's: {first['accuracy']:.4f} against {celltypist['accuracy']:.4f}: "
        f"{met(first['accuracy'] >= celltypist['accuracy'])}.",
        f"- Build ≤ {BUILD_TARGET_SECONDS:.0f} s: {build['build_seconds']:.1f} s: "
        f"{met(build['build_seconds'] <= BUILD_TARGET_SECONDS)}.",
        f"- Build faster than CellTypist's fit: {build['build_seconds']:.1f} s against {celltypist['fit_seconds']:.1f} s: "
        f"{met(build['build_seconds'] < celltypist['fit_seconds'])}.",
        f"- Peak RSS of the build ≤ {RSS_TARGET_GB:.0f} GB: {build['peak_rss_gb']:.2f} GB: "
        f"{met(build['peak_rss_gb'] <= RSS_TARGET_GB)}.",
    ]


def _world_line(head: dict, records: list[dict]) -> str:
    world = head.get("world", {})
    sim = next((r for r in records if r["phase"] == "simulate"), None)
    n_ref = head.get("sizes")
    queries = head.get("queries")
    if world.get("world") == "hard":
        genes = world.get("genes") or "the hard world's 3,000"
        text = (f"the hard world (`scconcerto.datasets.write_hard_simulation`, seed {world.get('seed')}, {genes} genes: "
                "12 types in 4 lineages whose subtypes differ by a handful of genes, gene-specific batch effects, "
                "per-batch depths); reference: cells of batches 0–2; queries: cells of the held-out batch 3")
    else:
        text = (f"the easy world (`simulate_to_h5ad`: {world.get('types')} types, {world.get('batches')} batches, "
                f"{world.get('markers')} markers per type, batch effect {world.get('batch_effect')}, depth "
                f"{world.get('depth')}, {world.get('genes')} genes); reference: cells of every batch but the last; "
                "queries: cells of the held-out last batch")
    reused = "" if sim else " (files of an earlier run with the same world reused: no simulate phase)"
    sizes = ", ".join(f"{n:,}" for n in n_ref or [])
    query_sizes = ", ".join(f"{q:,}" for q in queries or [])
    return f"- Data: {text}; reference of {sizes} cells, queries of {query_sizes} cells{reused}."


def render(records: list[dict]) -> str:
    """The markdown text of a run."""
    head = next((r for r in records if r["phase"] == "run"), {})
    machine = head.get("machine") or next((r.get("machine") for r in records if r.get("machine")), {}) or {}
    command = head.get("command", "python benchmarks/scale.py run ... (command not recorded)")
    finished = head.get("finished")
    lines = [
        "# Atlas scale: scConcerto against CellTypist and Symphony",
        "",
        "Generated by `benchmarks/scale.py` (`run --report`, or `report` on the run's JSON): do not edit by hand;",
        "run the command below again to regenerate it. How the benchmark works and the design behind it:",
        "[docs/scale.md](../docs/scale.md).",
        "",
        f"- Date: {head.get('date', 'not recorded')}" + (f" (finished {finished})" if finished else
                                                          " (**the run did not finish**: phases below are those done)"),
        f"- Commit: {head.get('commit', 'not recorded')}",
        f"- Command: `{command}`",
        f"- Machine: {machine.get('cpus', '?')} CPU cores, GPU {machine.get('gpu') or 'none'}, torch "
        f"{machine.get('torch', '?')}, Python {machine.get('python', '?')}; device `{head.get('device', '?')}`; "
        f"1-min load average {_load(head)} over the run (per phase below).",
        _world_line(head, records),
        "- Every phase runs in its own process (its peak RSS is its own). Wall-clock seconds follow the machine's load; "
        "process CPU seconds (all threads) much less so. Compare methods within this run only.",
        "",
        "## Results",
        "",
        "Accuracy and macro-F1 on the smallest query (the one every method maps). scConcerto's build is setup, "
        "training with the package defaults from the backed reference, reference embedding and mapping preparation; "
        "a peer's fit is its training on the reference read into memory.",
        "",
    ]
    header, rows = results_rows(records)
    lines += _table(header, rows) if rows else ["(no method finished)"]
    targets = target_lines(records)
    if targets and head.get("world", {}).get("world") == "hard":
        lines += ["", "## Goals (hard world, 2 cores)", "", *targets]
    header, rows = phase_rows(records)
    lines += ["", "## Phases", "", *_table(header, rows), ""]
    return "\n".join(lines)


def write_report(records: list[dict], path: str | os.PathLike[str]) -> Path:
    """Write :func:`render`'s text to ``path`` atomically (a temporary file moved into place, with the
    permissions of a new file)."""
    from scconcerto._io import write_atomic_file

    text = render(records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic_file(path, lambda tmp: tmp.write_text(text), overwrite=True)
