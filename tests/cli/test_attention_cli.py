"""``scconcerto attention``: CSV of the top features per group, heatmap, agreement; safe outputs."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from scconcerto.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_model, sim):
    folder = tmp_path_factory.mktemp("attention_cli")
    trained_model.save(folder / "model")
    sim.write_h5ad(folder / "data.h5ad")
    return folder


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_table_plot_and_agreement(files, trained_model, sim, tmp_path, capsys):
    from scconcerto.tools import rank_attention

    before = _digest(files / "data.h5ad")
    out, plot, agree = tmp_path / "markers.csv", tmp_path / "heat.png", tmp_path / "agree.csv"
    rc = main(["attention", str(files / "model"), str(files / "data.h5ad"), "--groupby", "cell_type",
               "--out", str(out), "--plot", str(plot), "--agreement", str(agree), "--n-top", "10",
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    table = pd.read_csv(out)
    assert list(table.columns[:4]) == ["modality", "group", "rank", "feature"]
    assert set(table["modality"]) == {"rna"} and table.groupby("group").size().eq(10).all()
    expected = rank_attention(sim.copy(), "cell_type", model=trained_model, n_top=10, key_added="")
    for group, ranked in expected.items():
        assert table.loc[table["group"] == group, "feature"].tolist() == ranked["feature"].tolist()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    agreement = pd.read_csv(agree)
    assert list(agreement.columns[:5]) == ["modality", "group", "n_cells", "feature", "found_by"]
    assert set(agreement["group"]) == set(expected) and set(agreement["modality"]) == {"rna"}
    both = agreement[agreement["found_by"] == "both"].groupby("group").size()
    # top 10 of 300 genes: 0.33 shared by chance per group; the sparsest type shares 1-2 at seeds 0-2, whichever
    # space the positives are searched in
    assert len(both) == len(expected) and (both >= 1).all() and both.sum() >= 2 * len(expected)
    summary = json.loads(capsys.readouterr().out)["agreement"]["rna"]
    assert summary["top"] == 10 and summary["mean_overlap"] >= 2 and -1 <= summary["mean_spearman"] <= 1
    assert _digest(files / "data.h5ad") == before  # the input is never modified


def test_refuses_to_overwrite_unless_asked(files, tmp_path, capsys):
    out = tmp_path / "markers.csv"
    out.write_text("keep me")
    args = ["attention", str(files / "model"), str(files / "data.h5ad"), "--groupby", "cell_type",
            "--out", str(out), "--device", "cpu"]
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(args + ["--overwrite", "--method", "wilcoxon", "--n-top", "3"]) == 0
    assert pd.read_csv(out)["pval_adj"].notna().all()


def test_clear_errors(files, tmp_path, capsys):
    base = ["attention", str(files / "model"), str(files / "data.h5ad"), "--out", str(tmp_path / "m.csv")]
    assert main(base + ["--groupby", "no_such_column"]) == 2
    assert "no_such_column" in capsys.readouterr().err
    assert main(base + ["--groupby", "cell_type", "--modality", "protein"]) == 2
    assert "without proteins" in capsys.readouterr().err
    assert main(base + ["--groupby", "cell_type", "--plot", str(tmp_path / "m.csv")]) == 2
    assert "different files" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()


def test_protein_model_writes_both_modalities(sim_protein, tmp_path):
    from scconcerto import Concerto

    Concerto(sim_protein, batch_key="batch", protein_key="protein").train(epochs=1, progress=False,
                                                                         device="cpu").save(tmp_path / "model")
    sim_protein.write_h5ad(tmp_path / "data.h5ad")
    out = tmp_path / "markers.csv"
    rc = main(["attention", str(tmp_path / "model"), str(tmp_path / "data.h5ad"), "--groupby", "cell_type",
               "--out", str(out), "--n-top", "3", "--plot", str(tmp_path / "heat.pdf"), "--device", "cpu",
               "--agreement", str(tmp_path / "agree.csv")])
    assert rc == 0
    agreement = pd.read_csv(tmp_path / "agree.csv")
    assert set(agreement["modality"]) == {"rna", "protein"}
    assert set(agreement.loc[agreement["modality"] == "protein", "feature"]) <= set(sim_protein.uns["protein_names"])
    table = pd.read_csv(out)
    assert table.groupby("modality").size().to_dict() == {"protein": 12, "rna": 12}
    assert set(table.loc[table["modality"] == "protein", "feature"]) <= set(sim_protein.uns["protein_names"])
    assert (tmp_path / "heat.pdf").read_bytes()[:5] == b"%PDF-"


def test_agreement_skips_a_one_cell_group_and_still_writes_the_markers(files, sim, tmp_path, capsys, caplog):
    data = sim.copy()
    labels = data.obs["cell_type"].astype(str).to_numpy()
    labels[0] = "singleton"  # scanpy's rank_genes_groups cannot test a group of one cell
    data.obs["cell_type"] = pd.Categorical(labels)
    data.write_h5ad(tmp_path / "data.h5ad")
    out, agree = tmp_path / "markers.csv", tmp_path / "agree.csv"
    with caplog.at_level("WARNING", logger="scconcerto"):
        rc = main(["attention", str(files / "model"), str(tmp_path / "data.h5ad"), "--groupby", "cell_type",
                   "--out", str(out), "--agreement", str(agree), "--n-top", "10", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert "singleton" in caplog.text and "too few cells" in caplog.text
    assert "singleton" in set(pd.read_csv(out)["group"])  # its attention ranking is still written
    agreement = pd.read_csv(agree)
    lone = agreement[agreement["group"] == "singleton"]
    assert len(lone) and (lone["found_by"] == "attention").all()  # no expression ranking for one cell
    assert set(agreement["group"]) == {"singleton", "type_0", "type_1", "type_2", "type_3"}
