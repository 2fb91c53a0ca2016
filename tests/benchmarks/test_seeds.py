"""Seed spread of benchmark runs: means and deviations by hand, merging runs, the best-peer comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("benchmarks.seeds")

from benchmarks import seeds  # noqa: E402


def write_run(folder: Path, rows: list[dict], seed: int | None) -> str:
    folder.mkdir(parents=True)
    payload = {"task": "label_transfer", "rows": rows, "skipped": [], "notes": [], "figures": [],
               "extra_tables": [], **({"seed": seed} if seed is not None else {})}
    (folder / "label_transfer.json").write_text(json.dumps(payload))
    return str(folder)


def row(split: str, method: str, acc: float, f1: float) -> dict:
    return {"split": split, "method": method, "acc": acc, "macro_f1": f1, "median_f1": f1}


def test_spread_and_best_peer_by_hand(tmp_path: Path) -> None:
    a = write_run(tmp_path / "s0", [row("A", "scconcerto", 0.90, 0.8), row("A", "symphony", 0.95, 0.7),
                                    row("B", "scconcerto", 0.99, 0.9), row("B", "symphony", 0.97, 0.9)], seed=0)
    b = write_run(tmp_path / "s1", [row("A", "scconcerto", 0.96, 0.6), row("B", "scconcerto", 0.97, 0.9)], seed=1)
    # a second folder of seed 1 with the other method, written before seeds were recorded
    c = write_run(tmp_path / "s1b", [row("A", "symphony", 0.93, 0.7), row("B", "symphony", 0.99, 0.9),
                                     row("B", "pca_knn", 0.5, 0.1) | {"error": "failed"}], seed=None)
    rows = seeds.gather("label_transfer", [a, b, f"1={c}"])
    assert len(rows) == 8 and "error" not in rows.columns  # the failed row is left out
    assert sorted(rows["seed"].unique()) == [0, 1]
    table = seeds.spread(rows, ["acc", "macro_f1"])
    ours_a = table[(table["split"] == "A") & (table["method"] == "scconcerto")].iloc[0]
    assert ours_a["acc_mean"] == pytest.approx(0.93) and ours_a["seeds"] == 2
    assert ours_a["acc_sd"] == pytest.approx(np.std([0.90, 0.96], ddof=1))
    assert list(table.columns[2:6]) == ["acc_mean", "acc_sd", "macro_f1_mean", "macro_f1_sd"]
    vs = seeds.against_best_peer(table, "acc").set_index("split")
    assert vs.loc["A", "best_peer"] == "symphony" and vs.loc["A", "difference"] == pytest.approx(0.93 - 0.94)
    assert vs.loc["B", "difference"] == pytest.approx(0.98 - 0.98)
    text = seeds.render("label_transfer", rows)
    assert "seeds 0, 1" in text and "at least the best peer on 1 of 2 splits" in text


def test_means_per_role_use_only_splits_every_method_scored(tmp_path: Path) -> None:
    # kang_ifnb is a development split, pbmcsca a test split; pca_knn lacks the second test split
    dev, test1, test2 = "kang_ifnb:a->b", "pbmcsca:x->y", "pbmcsca:x->z"
    a = write_run(tmp_path / "s0", [row(dev, "scconcerto", 0.8, 0.7), row(dev, "pca_knn", 0.6, 0.5),
                                    row(test1, "scconcerto", 0.9, 0.9), row(test1, "pca_knn", 0.7, 0.7),
                                    row(test2, "scconcerto", 0.1, 0.1)], seed=0)
    b = write_run(tmp_path / "s1", [row(dev, "scconcerto", 0.6, 0.7), row(dev, "pca_knn", 0.6, 0.5),
                                    row(test1, "scconcerto", 0.7, 0.9), row(test1, "pca_knn", 0.7, 0.7),
                                    row(test2, "scconcerto", 0.1, 0.1)], seed=1)
    table = seeds.spread(seeds.gather("label_transfer", [a, b]), ["acc"])
    means = seeds.by_role(table, "acc").set_index("role")
    assert list(means.index) == ["development", "test"]
    assert means.loc["test", "splits"] == 1  # test2 is left out: pca_knn did not score it
    assert means.loc["test", "scconcerto"] == pytest.approx(0.8) and means.loc["test", "pca_knn"] == pytest.approx(0.7)
    assert means.loc["development", "scconcerto"] == pytest.approx(0.7)
    text = seeds.render("label_transfer", seeds.gather("label_transfer", [a, b]))
    assert "| pbmcsca:x->y | test | scconcerto |" in text


def test_missing_seed_duplicates_and_missing_files_are_clear_errors(tmp_path: Path, capsys) -> None:
    a = write_run(tmp_path / "s0", [row("A", "scconcerto", 0.9, 0.8)], seed=None)
    with pytest.raises(ValueError, match="SEED="):
        seeds.gather("label_transfer", [a])
    with pytest.raises(ValueError, match="twice for seed 0"):
        seeds.gather("label_transfer", [f"0={a}", f"0={a}"])
    assert seeds.main([str(tmp_path / "nowhere")]) == 2
    assert "has no label_transfer.json" in capsys.readouterr().err
    out = tmp_path / "SEEDS.md"
    assert seeds.main([f"0={a}", "--out", str(out)]) == 0 and out.read_text().startswith("## label_transfer")
