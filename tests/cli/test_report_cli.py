import hashlib
import importlib.util
import json
from pathlib import Path

import matplotlib
import pytest

from scconcerto.cli import main

matplotlib.use("Agg")

_spec = importlib.util.spec_from_file_location(
    "scc_cli_mapped", Path(__file__).parents[1] / "plotting" / "_mapped_fixtures.py")
mapped_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mapped_fixtures)


@pytest.fixture(scope="module")
def mapped_files(trained_model, sim, tmp_path_factory):
    """A saved reference model (with its UMAP) and a mapped query .h5ad, both on disk."""
    model, query = mapped_fixtures.build(trained_model, sim, n_query=120, with_protein=False)
    folder = tmp_path_factory.mktemp("report_cli")
    model.save(folder / "ref_model")
    query.obs["given"] = query.obs["cell_type"]
    del query.obs["cell_type"]
    query.write_h5ad(folder / "query_mapped.h5ad")
    return folder / "ref_model", folder / "query_mapped.h5ad"


def test_report_command_writes_a_self_contained_html(mapped_files, tmp_path, capsys):
    model_dir, data = mapped_files
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    out = tmp_path / "report.html"
    assert main(["report", str(data), "--model", str(model_dir), "--out", str(out),
                 "--true-key", "cell_type=given", "--title", "PBMC test"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "<title>PBMC test</title>" in text and json.loads(capsys.readouterr().out)["out"] == str(out)
    assert text.index('alt="Predicted cell_type on the reference"') < text.index('alt="cell_type: confusion matrix"')
    assert "Against <code>given</code> (120 labelled cells)" in text
    assert 'href="data:text/csv;charset=utf-8;base64,' in text and 'download="query_mapped_predictions.csv"' in text
    assert hashlib.sha256(data.read_bytes()).hexdigest() == before


def test_report_command_without_true_key_and_refusals(mapped_files, tmp_path, capsys):
    model_dir, data = mapped_files
    out = tmp_path / "r.html"
    assert main(["report", str(data), "--reference", str(model_dir), "--out", str(out)]) == 0  # the former name
    assert "--reference is deprecated" in capsys.readouterr().err
    text = out.read_text(encoding="utf-8")
    assert "the query has no given labels to compare with" in text
    assert "<title>scConcerto mapping report</title>" in text  # the default title
    assert main(["report", str(data), "--model", str(model_dir), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["report", str(data), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "s.html")]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert main(["report", str(data), "--model", str(model_dir), "--out", str(tmp_path / "t.html"),
                 "--label-key", "missing"]) == 2
    assert "no predictions" in capsys.readouterr().err


def test_report_on_a_query_never_mapped_is_a_clear_error(mapped_files, sim, tmp_path, capsys):
    model_dir, _ = mapped_files
    raw = tmp_path / "raw.h5ad"
    sim[:50].copy().write_h5ad(raw)
    out = tmp_path / "r.html"
    assert main(["report", str(raw), "--model", str(model_dir), "--out", str(out)]) == 2  # was 0, an empty page
    err = capsys.readouterr().err
    assert "never mapped" in err and "scconcerto map" in err and "Traceback" not in err
    assert not out.exists()


def test_report_refuses_a_query_mapped_onto_another_model(mapped_files, trained_model, tmp_path, capsys):
    import anndata as ad

    model_dir, data = mapped_files
    query = ad.read_h5ad(data)
    query.uns["scconcerto_mapping"]["model_id"] = "0123456789abcdef"
    query.write_h5ad(tmp_path / "other.h5ad")
    assert main(["report", str(tmp_path / "other.h5ad"), "--model", str(model_dir),
                 "--out", str(tmp_path / "r.html")]) == 2
    assert "mapped onto another model" in capsys.readouterr().err
