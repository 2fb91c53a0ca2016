"""A query whose genes are named differently (Ensembl ids with versions, mouse orthologs) maps, annotates and
is written exactly as the same query in the model's names; the command line takes ``--query-species``."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scconcerto import Concerto
from scconcerto.cli import main
from scconcerto.data.genes import gene_table, ortholog_table
from scconcerto.datasets import simulate

FAST = dict(progress=False, device="cpu")


@pytest.fixture(scope="module")
def named():
    """Simulated cells whose 300 genes carry real human symbols with a 1:1 mouse ortholog and a unique id."""
    adata = simulate(500, 300, n_types=3, n_batches=2, seed=4)
    human = gene_table("human")
    unique_ids = human.drop_duplicates("symbol", keep=False).set_index("symbol")["id"]
    orth = ortholog_table()
    orth = orth[orth["human"].isin(unique_ids.index) & (orth["human"].str.upper() != orth["mouse"].str.upper())]
    chosen = orth.iloc[:300]
    adata.var_names = chosen["human"].to_numpy()
    names = pd.DataFrame({"mouse": chosen["mouse"].to_numpy(),
                          "ensembl": [f"{unique_ids[s]}.{i % 9 + 1}" for i, s in enumerate(chosen["human"])]},
                         index=adata.var_names)
    is_query = (adata.obs["batch"] == "batch_1").to_numpy() & (np.arange(adata.n_obs) % 2 == 0)
    return adata[~is_query].copy(), adata[is_query].copy(), names


@pytest.fixture(scope="module")
def model(named):
    ref, _, _ = named
    m = Concerto(ref, batch_key="batch", label_key="cell_type", seed=0).train(epochs=4, **FAST)
    return m.fit_classifier(epochs=4, seed=0, **FAST)


def _renamed(adata, names):
    out = adata.copy()
    out.var_names = names
    return out[:, np.random.default_rng(0).permutation(out.n_vars)].copy()  # another column order too


def test_ensembl_and_mouse_queries_map_like_the_symbol_query(named, model):
    _, query, names = named
    base = query.copy()
    model.map_query(base, place=False, device="cpu")
    ids = _renamed(query, names["ensembl"].to_numpy())
    mouse = _renamed(query, names["mouse"].to_numpy())
    model.map_query(ids, place=False, device="cpu")
    model.map_query(mouse, place=False, query_species="mouse", device="cpu")
    for other in (ids, mouse):
        np.testing.assert_allclose(other.obsm["X_concerto"], base.obsm["X_concerto"], atol=1e-5)
        assert np.array_equal(other.obs["cell_type_pred"].to_numpy(), base.obs["cell_type_pred"].to_numpy())
    assert ids.uns["scconcerto_mapping"]["gene_overlap"]["matched_by"] == {"id_symbol": len(model.setup.genes)}
    overlap = mouse.uns["scconcerto_mapping"]["gene_overlap"]
    assert overlap["matched_by"] == {"ortholog": len(model.setup.genes)} and overlap["query_species"] == "mouse"
    assert "matched_by" not in base.uns["scconcerto_mapping"]["gene_overlap"]  # nothing to report: exact names


def test_the_classifier_predicts_a_mouse_query_like_the_human_one(named, model):
    _, query, names = named
    base = model.predict(query.copy(), inplace=False, device="cpu")
    mouse = model.predict(_renamed(query, names["mouse"].to_numpy()), inplace=False, device="cpu",
                          query_species="mouse")
    np.testing.assert_allclose(mouse.probabilities, base.probabilities, atol=1e-5)
    assert mouse.gene_overlap["matched_by"] == {"ortholog": len(model.setup.genes)}


def test_map_and_annotate_predict_take_query_species(named, model, tmp_path, capsys):
    _, query, names = named
    model.save(tmp_path / "model")
    _renamed(query, names["mouse"].to_numpy()).write_h5ad(tmp_path / "mouse.h5ad")
    assert main(["map", str(tmp_path / "model"), str(tmp_path / "mouse.h5ad"), "--out", str(tmp_path / "m.h5ad"),
                 "--query-species", "mouse", "--no-umap", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["genes"]["matched_by"] == {"ortholog": len(model.setup.genes)}
    written = ad.read_h5ad(tmp_path / "m.h5ad").uns["scconcerto_mapping"]["gene_overlap"]
    assert written["query_species"] == "mouse" and int(written["matched_by"]["ortholog"]) == len(model.setup.genes)
    assert main(["annotate", "predict", str(tmp_path / "model"), str(tmp_path / "mouse.h5ad"),
                 "--out", str(tmp_path / "a.h5ad"), "--query-species", "mouse", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["gene_overlap"]["matched_by"] == {"ortholog": len(model.setup.genes)}
    # without the species the mouse names mostly miss the human model: a clear error naming the option
    assert main(["map", str(tmp_path / "model"), str(tmp_path / "mouse.h5ad"), "--out", str(tmp_path / "x.h5ad"),
                 "--device", "cpu"]) == 2
    assert "--query-species mouse" in capsys.readouterr().err


def test_annotate_train_adapts_to_a_mouse_target_and_reports_the_guard(named, model, tmp_path, capsys):
    ref, query, names = named
    model.save(tmp_path / "model")
    ref.write_h5ad(tmp_path / "ref.h5ad")
    _renamed(query, names["mouse"].to_numpy()).write_h5ad(tmp_path / "mouse.h5ad")
    assert main(["annotate", "train", str(tmp_path / "ref.h5ad"), "--pretrained", str(tmp_path / "model"),
                 "--label-key", "cell_type", "--target", str(tmp_path / "mouse.h5ad"), "--target-species", "mouse",
                 "--consistency-weight", "1", "--epochs", "2", "--out", str(tmp_path / "clf"), "--device", "cpu", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["target_gene_overlap"]["matched_by"] == {"ortholog": len(model.setup.genes)}
    assert {"collapsed", "effective_classes_adapted", "effective_classes_plain"} <= set(printed["adaptation"])
