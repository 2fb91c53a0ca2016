"""The report on the real output of ``Concerto.map_query`` (the names it writes are the report's contract)."""

import copy

import numpy as np
import pytest

from scconcerto.report import mapping_report


@pytest.fixture(scope="module")
def mapped_by_model(trained_model, sim):
    if not hasattr(trained_model, "map_query"):
        pytest.skip("query mapping (Concerto.map_query) is not available")
    model = copy.deepcopy(trained_model)  # map_query stores its calibration in the model
    emb = model.reference.embedding
    mean = emb.mean(axis=0)
    axes = np.linalg.svd(emb - mean, full_matrices=False)[2][:2].T
    model.reference.extra["umap"] = ((emb - mean) @ axes).astype(np.float32)  # skip fitting a UMAP in tests
    query = sim[sim.obs["batch"] == "batch_1"][:200].copy()
    query.obs["batch"] = "tech_new"
    model.map_query(query, device="cpu")
    return model, query


def test_report_reads_what_map_query_writes(mapped_by_model, tmp_path):
    model, query = mapped_by_model
    text = mapping_report(query, model, tmp_path / "r.html").read_text(encoding="utf-8")
    info = query.uns["scconcerto_mapping"]
    truth = query.obs["cell_type"].astype(str).to_numpy()
    pred = query.obs["cell_type_pred"].astype(str).to_numpy()
    n_unknown = int(query.obs["cell_type_unknown"].sum())
    assert f"accuracy {np.mean(truth == pred):.3f}" in text
    assert f"confidence below {info['thresholds']['cell_type']:.2f}" in text
    assert f"{n_unknown} ({100 * n_unknown / query.n_obs:.1f}%) called unknown" in text
    n_shared, n_vocab = info["gene_overlap"]["n_shared"], info["gene_overlap"]["n_vocab"]
    assert f"{n_shared:,} of {n_vocab:,}" in text and "Counted here" not in text
    assert "mapping: timings.embed" in text and "<th>adabn_sources</th><td>tech_new</td>" in text
    # by source, per-source panels, label, confidence, histogram, confusion, Sankey, training loss
    assert text.count('<img src="data:image/png;base64,') == 8
    assert "no stored place" not in text  # map_query placed the query on the reference UMAP


def test_report_places_an_embedded_query_itself_on_the_stored_umap(mapped_by_model, tmp_path):
    model, query = mapped_by_model
    unplaced = query.copy()
    del unplaced.obsm["X_umap_ref"]
    text = mapping_report(unplaced, model, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "placed here on the stored reference UMAP" in text
    assert text.count('<img src="data:image/png;base64,') == 8
