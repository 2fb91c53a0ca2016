"""``scconcerto demo``: a reference and a query mapped on scanpy's bundled PBMC 68k sample, next to a baseline."""

import json

import anndata as ad
import numpy as np

from scconcerto.cli import main
from scconcerto.cli.demo import pca_knn_baseline


def test_demo_builds_a_reference_maps_a_query_and_prints_the_baseline(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "4", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reference_cells"] + summary["query_cells"] == 700 and summary["gene_overlap"] == 1.0
    ours, baseline = summary["scconcerto"], summary["baseline_pca50_knn5"]
    # 10 noisy bulk labels, the largest 34 % of the cells: both must do far better than that
    assert ours["accuracy"] >= 0.6 and 0.0 <= ours["unknown_rate"] < 0.5
    assert baseline["accuracy"] >= 0.6 and 0 < baseline["macro_f1"] <= 1
    assert (out / "reference_model" / "config.json").exists() and (out / "umap.png").stat().st_size > 0
    embedded = ad.read_h5ad(out / "pbmc68k_embedded.h5ad")
    assert embedded.n_obs == 700 and embedded.obsm["X_concerto"].shape[0] == 700
    assert set(embedded.obs["dataset"]) == {"reference", "query"}


def test_baseline_is_a_nearest_neighbour_vote_in_the_reference_pca():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 40)) * 3
    labels = np.repeat(["a", "b", "c"], 60)
    x = (centers[np.repeat(np.arange(3), 60)] + rng.normal(size=(180, 40))).astype(np.float32)
    ref = ad.AnnData(x[::2], obs={"t": labels[::2]})
    query = ad.AnnData(x[1::2], obs={"t": labels[1::2]})
    assert (pca_knn_baseline(ref, query, "t", n_pcs=5, k=3) == labels[1::2]).all()
    # one query cell placed on a reference cell takes that cell's neighbourhood's label
    lone = ad.AnnData(x[:1] * 1.0, obs={"t": ["a"]})
    assert pca_knn_baseline(ref, lone, "t", n_pcs=5, k=1)[0] == "a"
