"""CI smoke run of the benchmark runner: tiny simulated data, scConcerto + the PCA-kNN baseline.

It checks that the runner, the task functions and the reports still work together, and that the
numbers written are the numbers a known answer demands (simulated types are well separated).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("benchmarks.run")

from benchmarks import run as runner  # noqa: E402
from benchmarks.peers import available_methods, make  # noqa: E402
from benchmarks.tasks.data import simulated  # noqa: E402
from benchmarks.tasks.imputation import pearson_per_column, split_cells  # noqa: E402
from benchmarks.tasks.speed import predicted_rss_mb, predicted_s, simulate_split, size_name  # noqa: E402


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    rc = runner.main(["--smoke", "--out", str(out), "--methods", "scconcerto,pca_knn", "--epochs", "2",
                      "--tasks", "label_transfer,unseen_type,clustering,imputation", "--no-figures",
                      "--threads", "0"])  # leave this test process's thread settings alone
    assert rc == 0
    return out


def test_writes_every_task_and_summary(smoke_out: Path) -> None:
    for task in ("label_transfer", "unseen_type", "clustering", "imputation"):
        payload = json.loads((smoke_out / f"{task}.json").read_text())
        assert payload["task"] == task and payload["seed"] == 0
        assert {r["method"] for r in payload["rows"]} == {"scconcerto", "pca_knn"}
        assert not [r for r in payload["rows"] if "error" in r]
        assert (smoke_out / f"{task}.md").read_text().startswith(f"## {task}")
    summary = (smoke_out / "SUMMARY.md").read_text()
    assert "## label_transfer" in summary and "Wall time" in summary


def test_summary_only_gathers_the_tables_already_written(smoke_out: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "gathered"
    out.mkdir()
    for task in ("label_transfer", "clustering"):
        shutil.copy(smoke_out / f"{task}.json", out)
    assert runner.main(["--out", str(out), "--summary-only", "--tasks", "label_transfer,clustering,speed",
                        "--note", "Runs: the smoke run.", "--threads", "0"]) == 0
    summary = (out / "SUMMARY.md").read_text()
    assert "Rebuilt from the <task>.json files" in summary and "Wall time" not in summary
    assert "Runs: the smoke run." in summary and "--note ..." in summary and summary.count("the smoke run") == 1
    assert "## label_transfer" in summary and "## clustering" in summary and "## speed" not in summary


def test_label_transfer_scores_are_consistent(smoke_out: Path) -> None:
    rows = json.loads((smoke_out / "label_transfer.json").read_text())["rows"]
    assert len(rows) == 2 * 3  # 3 leave-one-batch-out splits x 2 methods, on the same cells
    for r in rows:
        assert 0.0 <= r["macro_f1"] <= 1.0 and 0.0 <= r["acc"] <= 1.0
        assert r["n_eval"] == r["n_query"]  # every query type is in the reference
        assert 0 <= r["n_wrong"] <= r["n_eval"]
        assert np.isnan(r["auroc_right_wrong"]) == (r["n_wrong"] in (0, r["n_eval"]))  # scored when both kinds
    # the simulated types are separable: the PCA baseline must find them
    assert min(r["acc"] for r in rows if r["method"] == "pca_knn") > 0.9


def test_unseen_type_is_removed_from_reference(smoke_out: Path) -> None:
    rows = json.loads((smoke_out / "unseen_type.json").read_text())["rows"]
    for r in rows:
        assert r["removed"] == "type_0" and r["n_unseen"] > 0
        assert r["n_ref"] < 240  # two of three batches (240 cells) minus the removed type
        assert 0.0 <= r["auroc"] <= 1.0


def test_unknown_method_is_refused(tmp_path: Path) -> None:
    assert runner.main(["--smoke", "--out", str(tmp_path), "--methods", "nope"]) == 2


def test_peer_adapter_interface() -> None:
    """Every installed adapter maps a query onto the same cells with labels and confidences in [0, 1]."""
    adata = simulated(n_cells=180, n_genes=120)
    is_query = (adata.obs["batch"] == "batch_0").to_numpy()
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    light = [m for m in available_methods() if m in ("pca_knn", "celltypist")]
    for name in light:
        method = make(name, seed=0)
        method.fit(ref, "cell_type", "batch", True)
        out = method.map(query, "batch")
        assert out.labels.shape == (query.n_obs,)
        assert set(out.labels) <= set(ref.obs["cell_type"].astype(str))
        assert ((out.confidence >= 0) & (out.confidence <= 1)).all()
        if method.has_embedding:
            assert out.embedding.shape[0] == query.n_obs
            assert method.embed_reference().shape[0] == ref.n_obs


def test_imputation_scores_known_answer(smoke_out: Path) -> None:
    """The smoke protein panel follows the simulated cell type, so neighbours in a good embedding
    impute it well; scConcerto imputes through ``map_query`` and every score is a correlation."""
    payload = json.loads((smoke_out / "imputation.json").read_text())
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == {"scconcerto", "pca_knn"}
    for r in rows.values():
        assert -1.0 <= r["min_r"] <= r["median_r"] <= 1.0
        assert set(r["pearson_r"]) == {f"prot_{j}" for j in range(6)}
        assert r["n_ref"] + r["n_query"] == 300 and r["n_query"] < r["n_ref"]
    assert rows["pca_knn"]["median_r"] > 0.5
    assert rows["scconcerto"]["space"] == "rna_only"  # the query had no protein


def test_pearson_per_column_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    b[:, 1] = 3 * a[:, 1] + 2  # perfect linear relation
    b[:, 3] = 1.0  # constant: undefined
    r = pearson_per_column(a, b)
    for j in (0, 2):
        assert r[j] == pytest.approx(np.corrcoef(a[:, j], b[:, j])[0, 1])
    assert r[1] == pytest.approx(1.0)
    assert np.isnan(r[3])


def test_split_cells_is_seeded() -> None:
    adata = simulated(n_cells=200, n_genes=50)
    first, again, other = split_cells(adata, 0), split_cells(adata, 0), split_cells(adata, 1)
    assert (first == again).all() and not (first == other).all()
    assert 0.1 < first.mean() < 0.3


def test_speed_extrapolation_skips_runs_over_the_cap() -> None:
    assert predicted_s(None, 1000) is None
    assert predicted_s({"n_cells": 100, "fit_s": 3.0, "map_s": 1.0}, 1000) == pytest.approx(40.0)
    assert predicted_s({"n_cells": 100, "cap_s": 60.0, "error": "did not finish"}, 1000) == pytest.approx(600.0)
    assert predicted_s({"n_cells": 100, "error": "exited with code 1"}, 1000) is None
    # every mapping of a finished run counts
    assert predicted_s({"n_cells": 100, "fit_s": 3.0, "map_10k_s": 1.0, "map_100k_s": 2.0}, 1000) == pytest.approx(60.0)


def test_memory_extrapolation_follows_the_two_largest_runs() -> None:
    assert predicted_rss_mb([], 1000) is None
    assert predicted_rss_mb([{"n_cells": 100, "peak_rss_mb": 50.0}], 1000) is None  # fixed costs unknown
    runs = [{"n_cells": 10, "peak_rss_mb": 900.0}, {"n_cells": 100, "peak_rss_mb": 1000.0},
            {"n_cells": 1000, "peak_rss_mb": 2000.0}, {"n_cells": 5000, "error": "did not finish"}]
    # the line through (100, 1000) and (1000, 2000): fixed costs are not multiplied
    assert predicted_rss_mb(runs, 10_000) == pytest.approx(12_000.0)


def test_speed_split_holds_nested_queries_of_an_unseen_batch() -> None:
    ref, queries = simulate_split(400, 200, seed=3, query_sizes=(50, 150))
    assert ref.n_obs == 400 and [q.n_obs for q in queries] == [50, 150]
    assert set(ref.obs["batch"]) == {"batch_0", "batch_1"}
    assert all(set(q.obs["batch"]) == {"batch_2"} for q in queries)
    assert list(queries[1].obs_names[:50]) == list(queries[0].obs_names)  # the small query is inside the big one
    assert [size_name(n) for n in (150, 10_000, 100_000, 1_500)] == ["150", "10k", "100k", "1500"]


def test_unsupervised_task_compares_the_embedding_with_pca_and_harmony(tmp_path: Path) -> None:
    pytest.importorskip("harmonypy")
    rc = runner.main(["--smoke", "--out", str(tmp_path), "--tasks", "unsupervised", "--epochs", "2",
                      "--no-scib-metrics", "--no-figures", "--threads", "0"])
    assert rc == 0
    payload = json.loads((tmp_path / "unsupervised.json").read_text())
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == {"scconcerto", "pca", "harmony"}
    for r in rows.values():
        assert r["role"] == "development" and r["seeds"] == 3 and 0.0 <= r["acc"] <= 1.0
        assert r["LOO-batch 5-NN acc"].startswith(f"{r['acc']:.3f} ± ")
    assert rows["pca"]["acc"] > 0.9  # the simulated types are separable across batches
    assert any(n.startswith("simulated (development): acc vs pca") for n in payload["notes"])
    assert "| role |" in (tmp_path / "unsupervised.md").read_text()


def test_annotation_scores_rank_right_labels_by_confidence() -> None:
    from benchmarks.peers import Mapping
    from benchmarks.tasks.base import annotation_scores

    truth = np.array(["a", "a", "b", "b", "c", "x"])
    labels = np.array(["a", "b", "b", "a", "c", "a"])  # cells 1 and 3 wrong; cell 5's type is not in the reference
    seen = truth != "x"
    sure_when_right = annotation_scores(truth, Mapping(labels, np.array([0.9, 0.2, 0.8, 0.3, 0.7, 0.0])), seen)
    assert sure_when_right["auroc_right_wrong"] == 1.0 and sure_when_right["n_wrong"] == 2
    assert sure_when_right["acc"] == pytest.approx(0.6) and sure_when_right["n_eval"] == 5
    # one wrong label (0.75) outranks one right label (0.7): 5 of the 6 right-wrong pairs are ordered
    mixed = annotation_scores(truth, Mapping(labels, np.array([0.9, 0.75, 0.8, 0.3, 0.7, 1.0])), seen)
    assert mixed["auroc_right_wrong"] == pytest.approx(5 / 6)
    all_right = annotation_scores(truth, Mapping(truth.copy(), np.ones(6)), seen)
    assert np.isnan(all_right["auroc_right_wrong"]) and all_right["n_wrong"] == 0
