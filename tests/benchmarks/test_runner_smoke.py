"""CI smoke run of the benchmark runner: tiny simulated data, scConcerto + the PCA-kNN baseline.

It checks that the runner, the task functions and the reports still work together, and that the
numbers written are the numbers a known answer demands (simulated types are well separated).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("benchmarks.run")

from benchmarks import run as runner  # noqa: E402
from benchmarks.peers import available_methods, make  # noqa: E402
from benchmarks.tasks.data import simulated  # noqa: E402


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    rc = runner.main(["--smoke", "--out", str(out), "--methods", "scconcerto,pca_knn", "--epochs", "2",
                      "--tasks", "label_transfer,unseen_type,clustering", "--no-figures"])
    assert rc == 0
    return out


def test_writes_every_task_and_summary(smoke_out: Path) -> None:
    for task in ("label_transfer", "unseen_type", "clustering"):
        payload = json.loads((smoke_out / f"{task}.json").read_text())
        assert payload["task"] == task
        assert {r["method"] for r in payload["rows"]} == {"scconcerto", "pca_knn"}
        assert not [r for r in payload["rows"] if "error" in r]
        assert (smoke_out / f"{task}.md").read_text().startswith(f"## {task}")
    summary = (smoke_out / "SUMMARY.md").read_text()
    assert "## label_transfer" in summary and "Wall time" in summary


def test_label_transfer_scores_are_consistent(smoke_out: Path) -> None:
    rows = json.loads((smoke_out / "label_transfer.json").read_text())["rows"]
    assert len(rows) == 2 * 3  # 3 leave-one-batch-out splits x 2 methods, on the same cells
    for r in rows:
        assert 0.0 <= r["macro_f1"] <= 1.0 and 0.0 <= r["acc"] <= 1.0
        assert r["n_eval"] == r["n_query"]  # every query type is in the reference
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
