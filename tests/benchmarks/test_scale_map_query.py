"""``benchmarks/scale.py map-query`` on a model whose reference stores its approximate index."""

import argparse
import json

import numpy as np

from scconcerto import Concerto
from scconcerto.datasets import simulate


def test_map_query_reports_accuracy_and_the_stored_index_recall(tmp_path, monkeypatch, capsys):
    import scconcerto.search.neighbors as search_module
    from benchmarks import scale

    monkeypatch.setattr(search_module, "APPROXIMATE_MIN_REFERENCE", 100)  # this reference counts as large
    monkeypatch.setattr(search_module, "PREBUILT_APPROXIMATE_WORK", 1.0)  # and every search of it as big
    adata = simulate(800, 200, n_types=4, n_batches=3, seed=0)
    is_query = (adata.obs["batch"] == "batch_2").to_numpy()
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    model = Concerto(ref, batch_key="batch", label_key="cell_type").train(epochs=5, progress=False, device="cpu",
                                                                         prepare_mapping={"umap": False})
    assert "full" in model.reference.ann_indexes  # stored by prepare_mapping
    model.save(tmp_path / "model")
    query.write_h5ad(tmp_path / "query.h5ad")
    capsys.readouterr()
    scale.cmd_map_query(argparse.Namespace(model=str(tmp_path / "model"), query=str(tmp_path / "query.h5ad"),
                                           device="cpu", recall_sample=100))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT ")]
    record = json.loads(lines[-1][len("RESULT "):])
    assert record["phase"] == "map_query" and record["n_query"] == int(is_query.sum())
    assert record["index"] != "flat"  # the stored index was searched
    assert record["recall_sample"] == 100 and 0.9 <= record["index_recall_at_5"] <= 1.0
    assert record["accuracy"] >= 0.9  # well-separated simulated types
    assert np.isfinite(record["seconds"]) and record["seconds"] > 0
