"""``scconcerto annotate train / predict / cv``."""

import hashlib
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scconcerto import Concerto
from scconcerto.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, sim, trained_model):
    folder = tmp_path_factory.mktemp("annotate_cli")
    sim[:300].copy().write_h5ad(folder / "ref.h5ad")
    sim[300:].copy().write_h5ad(folder / "query.h5ad")
    trained_model.save(folder / "ref_model")
    return folder


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_from_pretrained_then_predict(files, tmp_path, capsys):
    ref, query = files / "ref.h5ad", files / "query.h5ad"
    before = _sha(ref), _sha(query)
    rc = main(["annotate", "train", str(ref), "--label-key", "cell_type", "--batch-key", "batch",
               "--pretrained", str(files / "ref_model"), "--epochs", "4", "--out", str(tmp_path / "clf"),
               "--device", "cpu", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["classes"] == ["type_0", "type_1", "type_2", "type_3"]
    assert summary["train_cells"] + summary["validation_cells"] == 300
    # the label key is the reference's: unknown cells are flagged by mapping's novelty model
    assert summary["unknown_score"] == "reference" and 0 < summary["unknown_thresholds"]["max_softmax"] <= 1
    loaded = Concerto.load(tmp_path / "clf")
    assert loaded.classifier.state.label_key == "cell_type"
    assert loaded.classifier is not None  # classifier.safetensors round trip
    assert loaded.classifier.opinion is not None  # pooled with the expression vote by default
    assert loaded.classifier.state.config["lr"] == 3e-4  # fine-tuned from the pre-trained teacher
    rc = main(["annotate", "predict", str(tmp_path / "clf"), str(query), "--out", str(tmp_path / "q.h5ad"),
               "--device", "cpu"])
    assert rc == 0
    out = ad.read_h5ad(tmp_path / "q.h5ad")
    truth = out.obs["cell_type"].astype(str).to_numpy()
    assert (out.obs["cell_type_pred"].astype(str).to_numpy() == truth).mean() > 0.9
    np.testing.assert_allclose(out.obsm["cell_type_proba"].sum(1), 1.0, atol=1e-5)
    assert {"cell_type_confidence", "cell_type_unknown"} <= set(out.obs.columns)
    assert (_sha(ref), _sha(query)) == before
    assert main(["annotate", "predict", str(tmp_path / "clf"), str(query), "--out", str(tmp_path / "q2.h5ad"),
                 "--device", "cpu", "--known-share", "0.9"]) == 0
    again = ad.read_h5ad(tmp_path / "q2.h5ad")
    assert again.uns["scconcerto_annotation"]["known_share"] == 0.9
    assert (again.obs["cell_type_known_prob"].to_numpy() >= out.obs["cell_type_known_prob"].to_numpy()).all()
    np.testing.assert_array_equal(again.obs["cell_type_unknown"].to_numpy(), out.obs["cell_type_unknown"].to_numpy())


def test_predict_with_a_model_without_classifier_is_a_one_line_error(files, tmp_path, capsys):
    rc = main(["annotate", "predict", str(files / "ref_model"), str(files / "query.h5ad"),
               "--out", str(tmp_path / "q.h5ad")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "fit_classifier" in err and "Traceback" not in err
    assert not (tmp_path / "q.h5ad").exists()


def test_cv_prints_per_fold_metrics_and_writes_the_table(files, tmp_path, capsys):
    out = tmp_path / "cv.csv"
    rc = main(["annotate", "cv", str(files / "ref.h5ad"), "--label-key", "cell_type", "--batch-key", "batch",
               "--folds", "2", "--no-pretrain", "--epochs", "2", "--device", "cpu", "--no-progress",
               "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the JSON result alone on stdout, the table for people on stderr
    assert "ACC" in captured.err and "macro-F1" in captured.err and "median-F1" in captured.err
    table = pd.read_csv(out)
    assert list(table["fold"]) == [0, 1] and table["n_test"].sum() == 300  # every cell tested once
    # the printed figures are the table's (accuracy itself is tested in tests/model/test_annotation.py)
    assert f"{table['median_f1'].mean():.4f}" in captured.err
    assert result["out"] == str(out) and [f["fold"] for f in result["folds"]] == [0, 1]
    assert result["mean"]["median_f1"] == pytest.approx(table["median_f1"].mean())
    assert table[["accuracy", "macro_f1", "median_f1"]].stack().between(0, 1).all()
    rc = main(["annotate", "cv", str(files / "ref.h5ad"), "--label-key", "cell_type", "--folds", "2",
               "--out", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_train_refuses_an_existing_output_before_any_work(files, tmp_path, capsys):
    (tmp_path / "clf").mkdir()
    rc = main(["annotate", "train", str(files / "ref.h5ad"), "--label-key", "cell_type", "--out",
               str(tmp_path / "clf")])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_train_without_the_expression_vote(files, tmp_path):
    rc = main(["annotate", "train", str(files / "ref.h5ad"), "--label-key", "cell_type", "--batch-key", "batch",
               "--pretrained", str(files / "ref_model"), "--epochs", "2", "--no-expression-vote", "--lr", "1e-3",
               "--out", str(tmp_path / "clf"), "--device", "cpu", "--no-progress"])
    assert rc == 0
    loaded = Concerto.load(tmp_path / "clf")
    assert loaded.classifier.opinion is None and loaded.classifier.state.config["lr"] == 1e-3


@pytest.mark.parametrize("all_genes", [False, True])
def test_train_for_a_target_learns_from_its_genes_unless_told_otherwise(files, tmp_path, capsys, all_genes):
    target = ad.read_h5ad(files / "query.h5ad")
    target = target[:, ~target.var_names.isin(target.var_names[::3])].copy()  # two thirds of the genes
    target.write_h5ad(tmp_path / "target.h5ad")
    rc = main(["annotate", "train", str(files / "ref.h5ad"), "--label-key", "cell_type", "--batch-key", "batch",
               "--pretrained", str(files / "ref_model"), "--epochs", "2", "--out", str(tmp_path / "clf"),
               "--target", str(tmp_path / "target.h5ad"), "--device", "cpu", "--no-progress",
               *(["--all-genes"] if all_genes else [])])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n_model = len(Concerto.load(files / "ref_model").setup.genes)
    assert summary["genes_learned_from"] == (n_model if all_genes else summary["target_gene_overlap"]["n_shared"])
    assert summary["target_gene_overlap"]["n_shared"] < n_model and summary["target_cells"] == 0
