"""``benchmarks/scale.py``: the hard world's files, ``run``'s phases on them, and the report of a run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from benchmarks import scale
from benchmarks.scale_report import load_1min, render, write_report


def test_simulate_hard_writes_reference_batches_and_a_held_out_query_batch(tmp_path, capsys):
    scale.cmd_simulate_hard(argparse.Namespace(n_ref=600, queries=[200, 80], genes=300, seed=0,
                                               workdir=str(tmp_path)))
    ref = ad.read_h5ad(tmp_path / "ref_600.h5ad")
    small, large = ad.read_h5ad(tmp_path / "query_80.h5ad"), ad.read_h5ad(tmp_path / "query_200.h5ad")
    assert ref.shape == (600, 300) and large.shape == (200, 300) and small.shape == (80, 300)
    assert sorted(ref.obs["batch"].unique()) == ["batch_0", "batch_1", "batch_2"]  # batches 0..n-2
    assert set(large.obs["batch"]) == {"batch_3"}  # the last batch, never in the reference
    assert list(small.obs_names) == list(large.obs_names[:80])  # the smaller query: the first cells of the larger
    assert np.array_equal(small.X.toarray(), large.X[:80].toarray())
    assert ref.obs["cell_type"].nunique() == 12 and set(large.obs["cell_type"]) <= set(ref.obs["cell_type"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["query_200.h5ad", "query_80.h5ad", "ref_600.h5ad"]
    record = json.loads(capsys.readouterr().out.splitlines()[-1][len("RESULT "):])
    assert record["phase"] == "simulate" and record["world"] == "hard" and record["n_ref"] == 600


def _fake_records(argv: list[str]) -> list[dict]:
    """What each sub-command would print; ``simulate-hard`` also writes (empty) files where run expects them."""
    opt = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
    up = {"uptime_start": "up 1:00, load average: 1.50, 1.0, 1.0", "uptime_end": "up 1:01, load average: 2.25, 1, 1"}
    phase = argv[0]
    if phase == "simulate-hard":
        work = Path(opt["--workdir"])
        queries = [int(q) for q in argv[argv.index("--queries") + 1: argv.index("--workdir")]]
        for name in [f"ref_{opt['--n-ref']}", *(f"query_{q}" for q in queries)]:
            (work / f"{name}.h5ad").touch()
        return [{"phase": "simulate", "world": "hard", "n_ref": int(opt["--n-ref"]), "queries": queries,
                 "simulate_seconds": 1.0, "seconds": 1.2, "peak_rss_gb": 0.4, **up}]
    if phase == "build":
        return [{"phase": "build", "n_cells": 100_000, "genes": 3000, "epochs": 8, "build_seconds": 90.0,
                 "train_seconds": 80.0, "reference_embed_seconds": 9.0, "index_seconds": 3.0, "peak_rss_gb": 1.5,
                 "process_cpu_seconds": 150.0, "machine": {"cpus": 2, "gpu": None}, **up}]
    n_query = int(Path(opt["--query"]).stem.split("_")[1])
    if phase == "map":
        return [{"phase": "map", "n_query": n_query, "seconds": 3.0, "embed_seconds": 2.0, "knn_and_vote_seconds": 1.0,
                 "process_cpu_seconds": 4.0, "accuracy": 0.80, "macro_f1": 0.78, "ivf_recall_at_5": 0.95,
                 "peak_rss_gb": 0.9, **up}]
    if phase == "map-query":
        return [{"phase": "map_query", "n_query": n_query, "seconds": 12.0, "model_load_seconds": 0.5,
                 "process_cpu_seconds": 15.0, "timings": {"knn": 2.0, "place": 8.0, "total": 12.0}, "index": "ivf",
                 "accuracy": 0.85, "macro_f1": 0.84, "peak_rss_gb": 1.1, **up}]
    assert phase == "peer"
    accuracy = {"celltypist": 0.82, "symphony": 0.64}[opt["--method"]]
    return [{"phase": "peer", "method": opt["--method"], "n_ref": 100_000, "n_query": n_query, "read_seconds": 2.0,
             "fit_seconds": 120.0, "map_seconds": 5.0, "fit_process_cpu_seconds": 200.0,
             "map_process_cpu_seconds": 6.0, "accuracy": accuracy, "macro_f1": accuracy - 0.02, "peak_rss_gb": 4.0,
             "load_average": [2.0, 1.0, 1.0], **up}]


@pytest.fixture
def fake_children(monkeypatch):
    calls: list[list[str]] = []

    def child(argv, log):  # noqa: ANN001, ANN202
        calls.append(list(argv))
        return _fake_records(argv)

    monkeypatch.setattr(scale, "child", child)
    return calls


def _run_args(tmp_path: Path, **changes) -> argparse.Namespace:
    args = dict(world="hard", seed=0, sizes=[100_000], genes=None, types=10, batches=4, markers=20, batch_effect=0.5,
                depth=2000.0, skip_build=False, peers=["celltypist", "symphony"], queries=[10_000, 100_000],
                epochs=None, converge_epochs=0, device="cpu", workdir=str(tmp_path / "work"), resimulate=False,
                out=str(tmp_path / "run.json"), report=str(tmp_path / "SCALE.md"))
    return argparse.Namespace(**{**args, **changes})


def test_run_hard_world_runs_every_phase_on_its_files_and_reports_them(tmp_path, fake_children):
    argv = ["run", "--world", "hard", "--peers", "celltypist", "symphony"]
    scale.cmd_run(_run_args(tmp_path), argv)
    work = tmp_path / "work" / "hard"
    assert [c[0] for c in fake_children] == ["simulate-hard", "build", "map", "map-query", "map", "map-query",
                                             "peer", "peer"]
    assert fake_children[0][fake_children[0].index("--workdir") + 1] == str(work)
    assert fake_children[1][fake_children[1].index("--ref") + 1] == str(work / "ref_100000.h5ad")
    peers = [c for c in fake_children if c[0] == "peer"]
    assert {c[c.index("--query") + 1] for c in peers} == {str(work / "query_10000.h5ad")}  # the query all methods map
    assert all(c[c.index("--ref") + 1] == str(work / "ref_100000.h5ad") for c in peers)

    records = json.loads((tmp_path / "run.json").read_text())
    head = records[0]
    assert head["phase"] == "run" and head["command"] == "python benchmarks/scale.py " + " ".join(argv)
    assert head["world"]["world"] == "hard" and "finished" in head
    report = (tmp_path / "SCALE.md").read_text()
    assert report == render(records)
    results = report.split("## Results")[1].split("## Goals")[0]
    for method in ("`map_query`", "streamed `map`", "CellTypist", "Symphony"):
        assert method in results
    for column in ("map 10,000 cells (s)", "map 100,000 cells (s)", "peak RSS (GB)", "macro-F1"):
        assert column in results
    phases = report.split("## Phases")[1]
    assert phases.count("scConcerto `map_query`") == 2 and phases.count("scConcerto `map` (streamed)") == 2
    assert "simulate" in phases and "scConcerto build (backed)" in phases
    assert "Commit: " in report and head["command"] in report and "1.50 → 2.25" in report


def test_run_reuses_files_of_the_same_world_only(tmp_path, fake_children):
    scale.cmd_run(_run_args(tmp_path, peers=[], report=None), ["run"])
    scale.cmd_run(_run_args(tmp_path, peers=[], report=None), ["run"])
    assert [c[0] for c in fake_children].count("simulate-hard") == 1  # the second run reused the files
    scale.cmd_run(_run_args(tmp_path, peers=[], report=None, seed=1), ["run"])
    assert [c[0] for c in fake_children].count("simulate-hard") == 2  # another seed is another world
    assert fake_children[-6][0] == "simulate-hard" and fake_children[-6][fake_children[-6].index("--seed") + 1] == "1"


def test_report_goals_compare_with_celltypist_in_the_same_run(tmp_path):
    records = [{"phase": "run", "date": "2026-12-06 04:00 UTC", "commit": "abc1234", "command": "python x run",
                "machine": {"cpus": 2}, "world": {"world": "hard", "seed": 0, "genes": None}, "device": "cpu"}]
    records += _fake_records(["build", "--ref", "r", "--model", "m"])
    records += _fake_records(["map-query", "--model", "m", "--query", "/w/query_10000.h5ad"])
    records += _fake_records(["peer", "--method", "celltypist", "--ref", "r", "--query", "/w/query_10000.h5ad"])
    text = render(records)
    goals = text.split("## Goals")[1].split("## Phases")[0]
    assert "0.8500 against 0.8200: met" in goals  # accuracy
    assert "Build ≤ 100 s: 90.0 s: met" in goals
    assert "90.0 s against 120.0 s: met" in goals
    records[1]["peak_rss_gb"] = 3.5
    records[3]["accuracy"] = 0.9
    goals = render(records).split("## Goals")[1]
    assert "0.8500 against 0.9000: **not met**" in goals and "3.50 GB: **not met**" in goals
    assert "the run did not finish" in text  # no "finished" in its header
    path = write_report(records, tmp_path / "out" / "SCALE.md")
    assert path.read_text() == render(records) and [p.name for p in path.parent.iterdir()] == ["SCALE.md"]


def test_load_1min_reads_uptime_lines():
    assert load_1min(" 03:30:49 up  9:39,  0 user,  load average: 3.99, 4.40, 5.03") == 3.99
    assert load_1min("no load here") is None and load_1min(None) is None


def test_peer_phase_fits_and_maps_a_peer_on_the_same_files(tmp_path, capsys):
    scale.cmd_simulate_hard(argparse.Namespace(n_ref=600, queries=[200], genes=300, seed=0, workdir=str(tmp_path)))
    capsys.readouterr()
    scale.cmd_peer(argparse.Namespace(method="pca_knn", ref=str(tmp_path / "ref_600.h5ad"),
                                      query=str(tmp_path / "query_200.h5ad")))
    record = json.loads(capsys.readouterr().out.splitlines()[-1][len("RESULT "):])
    assert record["phase"] == "peer" and record["n_ref"] == 600 and record["n_query"] == 200
    assert 0.3 < record["accuracy"] <= 1.0  # the lineages at least (4 of 12 types' worth of chance is 0.08)
    assert record["fit_process_cpu_seconds"] >= 0 and record["map_seconds"] >= 0
