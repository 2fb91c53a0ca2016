"""``scconcerto demo``: a reference and a query mapped on scanpy's bundled PBMC 68k sample."""

import json

import anndata as ad

from scconcerto.cli import main


def test_demo_builds_a_reference_maps_a_query_and_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "4", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{\n"):])
    assert summary["reference_cells"] + summary["query_cells"] == 700 and summary["gene_overlap"] == 1.0
    # 10 noisy bulk labels, the largest 34 % of the cells: the mapping must do far better than that
    assert summary["accuracy"] >= 0.6 and 0.0 <= summary["unknown_rate"] < 0.5
    assert (out / "reference_model" / "config.json").exists() and (out / "umap.png").stat().st_size > 0
    embedded = ad.read_h5ad(out / "pbmc68k_embedded.h5ad")
    assert embedded.n_obs == 700 and embedded.obsm["X_concerto"].shape[0] == 700
    assert set(embedded.obs["dataset"]) == {"reference", "query"}
