"""``scconcerto map`` and ``scconcerto plot`` end to end on a saved model."""

import copy
import hashlib

import anndata as ad
import numpy as np
import pytest

from scconcerto.cli import main


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(trained_model, sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("map_cli")
    model = copy.deepcopy(trained_model)  # the shared fixture must not change
    emb = model.reference.embedding - model.reference.embedding.mean(0)
    model.reference.umap = (emb @ np.linalg.svd(emb, full_matrices=False)[2][:2].T).astype(np.float32)
    model.save(root / "model")  # a stored reference UMAP: no UMAP fit in tests
    query = sim[sim.obs["batch"] == "batch_1"][:150].copy()
    query.obs["batch"] = "new_lab"
    query.write_h5ad(root / "query.h5ad")
    return root


def test_map_writes_the_annotated_query_and_never_touches_inputs(files, capsys):
    before = digest(files / "query.h5ad")
    out = files / "mapped.h5ad"
    assert main(["map", str(files / "model"), str(files / "query.h5ad"), "--out", str(out), "--k", "7",
                 "--device", "cpu"]) == 0
    assert '"cells": 150' in capsys.readouterr().out
    mapped = ad.read_h5ad(out)
    assert {"cell_type_pred", "cell_type_confidence", "cell_type_unknown"} <= set(mapped.obs.columns)
    assert mapped.obsm["X_concerto"].shape == (150, 128) and mapped.obsm["X_umap_ref"].shape == (150, 2)
    info = mapped.uns["scconcerto_mapping"]
    assert info["k"] == {"cell_type": 7} and info["adabn_sources"][0] == "new_lab" and info["model"] == str(files / "model")
    assert info["adabn"]["balanced"] and info["adabn"]["label_key"] == "cell_type"
    truth, pred = mapped.obs["cell_type"].astype(str), mapped.obs["cell_type_pred"].astype(str)
    assert np.mean(truth == pred) >= 0.9
    assert digest(files / "query.h5ad") == before

    first = digest(out)  # refuses to overwrite without --overwrite, and leaves the file alone
    assert main(["map", str(files / "model"), str(files / "query.h5ad"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and digest(out) == first
    assert main(["map", str(files / "model"), str(files / "query.h5ad"), "--out", str(out), "--overwrite",
                 "--unknown-threshold", "1", "--reject", "--no-umap", "--device", "cpu", "--adjust-proportions"]) == 0
    again = ad.read_h5ad(out)
    assert again.obs["cell_type_unknown"].all() and set(again.obs["cell_type_pred"].astype(str)) == {"unknown"}
    assert "X_umap_ref" not in again.obsm
    report = again.uns["scconcerto_mapping"]["label_proportions"]["cell_type"]  # lists survive the h5ad round trip
    assert len(report["labels"]) == len(report["estimated"]) == len(report["reference"]) > 1

    plain = files / "plain.h5ad"
    assert main(["map", str(files / "model"), str(files / "query.h5ad"), "--out", str(plain), "--no-label-shift",
                 "--device", "cpu", "--known-share", "0.6"]) == 0
    assert not bool(ad.read_h5ad(plain).uns["scconcerto_mapping"]["adabn"]["balanced"])
    assert float(ad.read_h5ad(plain).uns["scconcerto_mapping"]["known_share"]) == 0.6
    assert "label_proportions" not in ad.read_h5ad(plain).uns["scconcerto_mapping"]


def test_map_reports_bad_inputs_in_one_paragraph(files, capsys):
    query = ad.read_h5ad(files / "query.h5ad")
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    query.write_h5ad(files / "ensembl.h5ad")
    code = main(["map", str(files / "model"), str(files / "ensembl.h5ad"), "--out", str(files / "x.h5ad")])
    err = capsys.readouterr().err
    assert code == 2 and "Only 0 of the model's" in err and "Ensembl" in err and not (files / "x.h5ad").exists()
    code = main(["map", str(files / "model"), str(files / "query.h5ad"), "--out", str(files / "x.h5ad"),
                 "--levels", "nope"])
    assert code == 2 and "not label keys" in capsys.readouterr().err
    code = main(["map", str(files / "model"), str(files / "query.h5ad"), "--out", str(files / "x.h5ad"),
                 "--known-share", "1"])
    assert code == 2 and "known_share" in capsys.readouterr().err and not (files / "x.h5ad").exists()


def test_plot_draws_the_query_on_the_reference_umap(files, capsys):
    mapped = files / "plotted.h5ad"
    assert main(["map", str(files / "model"), str(files / "query.h5ad"), "--out", str(mapped), "--device", "cpu"]) == 0
    fig = files / "mapping.png"
    assert main(["plot", str(mapped), "--model", str(files / "model"), "--out", str(fig)]) == 0
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(mapped), "--model", str(files / "model"), "--out", str(fig)]) == 2
    assert main(["plot", str(mapped), "--model", str(files / "model"), "--out", str(files / "f.png"),
                 "--color", "label,size"]) == 2
    assert "--color" in capsys.readouterr().err


def test_rna_only_query_on_a_protein_model_needs_the_reference_once(sim_protein, tmp_path, capsys):
    from scconcerto import Concerto

    ref, query = sim_protein[:480].copy(), sim_protein[480:].copy()
    model = Concerto(ref, batch_key="batch", label_key="cell_type", protein_key="protein")
    model.train(epochs=3, progress=False, device="cpu", prepare_mapping=False)
    model.reference.umap = np.zeros((ref.n_obs, 2), dtype=np.float32)
    model.save(tmp_path / "model")  # saved without the RNA-only reference embedding
    ref.write_h5ad(tmp_path / "ref.h5ad")
    del query.obsm["protein"]
    query.write_h5ad(tmp_path / "q.h5ad")
    args = ["map", str(tmp_path / "model"), str(tmp_path / "q.h5ad"), "--out", str(tmp_path / "m.h5ad"),
            "--device", "cpu"]
    assert main(args) == 2 and "prepare_mapping" in capsys.readouterr().err
    assert main(args + ["--reference", str(tmp_path / "ref.h5ad")]) == 0
    mapped = ad.read_h5ad(tmp_path / "m.h5ad")
    assert mapped.obsm["protein_imputed"].shape == (120, 6) and mapped.uns["scconcerto_mapping"]["space"] == "rna_only"
    assert list(mapped.uns["protein_imputed_names"]) == list(sim_protein.uns["protein_names"])
    # trained with the default prepare_mapping=True, the saved model needs no reference at mapping time
    Concerto(ref, batch_key="batch", label_key="cell_type", protein_key="protein").train(
        epochs=3, progress=False, device="cpu").save(tmp_path / "model2")
    args2 = ["map", str(tmp_path / "model2"), str(tmp_path / "q.h5ad"), "--out", str(tmp_path / "m2.h5ad"),
             "--device", "cpu"]
    assert main(args2) == 0
    assert ad.read_h5ad(tmp_path / "m2.h5ad").uns["scconcerto_mapping"]["space"] == "rna_only"


def test_plot_refuses_a_query_mapped_onto_another_model(files, sim, tmp_path, capsys):
    from scconcerto import Concerto

    mapped = tmp_path / "mapped.h5ad"
    assert main(["map", str(files / "model"), str(files / "query.h5ad"), "--out", str(mapped), "--device", "cpu"]) == 0
    recorded = ad.read_h5ad(mapped).uns["scconcerto_mapping"]["model_id"]
    assert recorded == Concerto.load(files / "model").model_id
    other = Concerto(sim, batch_key="batch", label_key="cell_type", seed=5).train(epochs=1, progress=False,
                                                                                  device="cpu")
    other.reference.umap = np.zeros((sim.n_obs, 2), dtype=np.float32)
    other.save(tmp_path / "other")
    capsys.readouterr()
    assert main(["plot", str(mapped), "--model", str(tmp_path / "other"), "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert "mapped onto another model" in err and recorded in err and not (tmp_path / "f.png").exists()
    # a query that was never mapped cannot be plotted either
    assert main(["plot", str(files / "query.h5ad"), "--model", str(files / "model"),
                 "--out", str(tmp_path / "g.png")]) == 2
    assert "never mapped" in capsys.readouterr().err


def test_every_command_prints_its_result_as_one_json_object_under_out(files, tmp_path, capsys):
    import json

    out = tmp_path / "new_folder" / "embedded.h5ad"  # embed creates the output's folder
    assert main(["embed", str(files / "model"), str(files / "query.h5ad"), "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(out) and out.exists() and result["cells"] == 150
    assert main(["cluster", str(out), "--out", str(tmp_path / "c.h5ad")]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(tmp_path / "c.h5ad")
    mapped = tmp_path / "m.h5ad"
    assert main(["map", str(files / "model"), str(files / "query.h5ad"), "--out", str(mapped), "--device", "cpu",
                 "--no-umap"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(mapped)
