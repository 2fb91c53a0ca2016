"""The catalogue of bad inputs: each gets a clear error of our own class, or a documented handling."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scconcerto import Concerto, InputError, ModelFileError
from scconcerto._io import read_h5ad


def _adata(x, **obs):
    x = sp.csr_matrix(np.asarray(x, dtype=np.float32))
    return ad.AnnData(x, obs=pd.DataFrame(obs or None, index=[f"c{i}" for i in range(x.shape[0])]),
                      var=pd.DataFrame(index=[f"G{i}" for i in range(x.shape[1])]))


@pytest.mark.parametrize("value, message", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                            (-1.0, "negative")])
def test_non_finite_and_negative_values(sim, value, message):
    bad = sim[:50].copy()
    bad.X = bad.X.copy()
    bad.X.data[-1] = value  # far from the start: the whole matrix is checked, not a sample
    with pytest.raises(InputError, match=message):
        Concerto(bad)


def test_normalized_input_is_detected_and_used_as_is(sim):
    import scanpy as sc

    x = sim.copy()
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    assert Concerto(x).setup.input_kind == "log_normalized"
    assert Concerto(sim).setup.input_kind == "counts"


def test_all_zero_cells_and_genes_are_embedded_finitely(sim):
    x = sim[:60].copy()
    m = x.X.tolil()
    m[3, :] = 0
    m[:, 5] = 0
    m = m.tocsr()
    m.eliminate_zeros()
    x.X = m
    model = Concerto(x, batch_key="batch").train(epochs=1, progress=False, device="cpu")
    emb = model.embed(x)
    assert np.isfinite(emb).all() and emb.shape == (60, 128)


def test_duplicated_names(sim):
    dup = sim[:20].copy()
    dup.var_names = ["G"] + list(dup.var_names[1:-1]) + ["G"]
    with pytest.raises(InputError, match="var_names_make_unique"):
        Concerto(dup)
    dup_cells = sim[:20].copy()
    dup_cells.obs_names = ["c"] * 20
    with pytest.raises(InputError, match="obs_names_make_unique"):
        Concerto(dup_cells)


def test_numeric_or_ensembl_query_genes_against_symbols(trained_model, sim):
    q = sim[:10].copy()
    q.var_names = [str(i) for i in range(q.n_vars)]
    with pytest.raises(InputError, match="Only 0 of the model's"):
        trained_model.embed(q)
    q.var_names = [f"ENSG{i:011d}" for i in range(q.n_vars)]
    with pytest.raises(InputError, match="Ensembl"):
        trained_model.embed(q)


def test_too_few_shared_genes(trained_model, sim):
    q = sim[:10, :100].copy()  # a third of the vocabulary
    vocab = trained_model.setup.genes
    shared = len(set(vocab) & set(q.var_names))
    with pytest.raises(InputError, match=rf"Only {shared} of the model's {len(vocab)} genes \({100 * shared / len(vocab):.1f}%\)"):
        trained_model.embed(q)
    assert trained_model.embed(q, min_overlap=0.3).shape == (10, 128)


def test_missing_keys(sim):
    for kwargs, msg in [({"batch_key": "b"}, "batch key 'b'"), ({"label_key": "l"}, "label key 'l'"),
                        ({"protein_key": "p"}, "protein key 'p'"), ({"layer": "raw"}, "Layer 'raw'")]:
        with pytest.raises(InputError, match=msg):
            Concerto(sim, **kwargs)


def test_label_column_with_missing_values_marks_those_cells_unlabeled(sim):
    x = sim[:80].copy()
    labels = x.obs["cell_type"].astype(object)
    labels.iloc[:10] = np.nan
    x.obs["cell_type"] = labels
    model = Concerto(x, batch_key="batch", label_key="cell_type").train(epochs=1, progress=False, device="cpu")
    codes = model.reference.labels["cell_type"]
    assert (codes[:10] == -1).all() and (codes[10:] >= 0).all()


def test_single_cell_source_is_refused_for_a_reference_and_handled_for_a_query(sim, trained_model):
    x = sim[:40].copy()
    x.obs["batch"] = ["lonely"] + ["b"] * 39
    with pytest.raises(InputError, match="single cell"):
        Concerto(x, batch_key="batch")
    q = sim[:5].copy()
    q.obs["batch"] = ["new_single"] + ["new_many"] * 4
    emb = trained_model.embed(q)  # a one-cell unseen source falls back to the reference statistics
    assert np.isfinite(emb).all()


def test_more_sources_than_cells_per_batch_and_missing_batch_values(sim):
    x = sim[:60].copy()
    x.obs["batch"] = np.repeat([f"s{i}" for i in range(20)], 3)
    model = Concerto(x, batch_key="batch").train(epochs=1, batch_size=16, progress=False, device="cpu")
    assert len(model.setup.sources) == 20
    y = sim[:20].copy()
    b = y.obs["batch"].astype(object)
    b.iloc[0] = None
    y.obs["batch"] = b
    with pytest.raises(InputError, match="missing values"):
        Concerto(y, batch_key="batch")


def test_empty_truncated_and_foreign_files(tmp_path, sim):
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_h5ad(empty)
    good = tmp_path / "good.h5ad"
    sim[:50].copy().write_h5ad(good)
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_h5ad(truncated)
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not an .h5ad"):
        read_h5ad(csv)
    with pytest.raises(InputError, match="does not exist"):
        read_h5ad(tmp_path / "missing.h5ad")
    with pytest.raises(InputError, match="empty"):
        Concerto(_adata(np.zeros((0, 3))))


def test_corrupt_model_files(trained_model, tmp_path):
    path = trained_model.save(tmp_path / "m")
    (path / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        Concerto.load(path)
    path = trained_model.save(tmp_path / "m2")
    (path / "weights.safetensors").unlink()
    with pytest.raises(ModelFileError, match="lacks weights.safetensors"):
        Concerto.load(path)
    path = trained_model.save(tmp_path / "m3")
    (path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="checksum"):
        Concerto.load(path)
    path = trained_model.save(tmp_path / "m4")
    cfg = json.loads((path / "config.json").read_text())
    cfg["network"]["dim"] = 64  # shapes in the JSON disagree with the weights
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="its own checksum"):
        Concerto.load(path)
    from scconcerto.model.storage import config_checksum

    cfg["config_checksum"] = config_checksum(cfg)  # the edit made on purpose, checksum updated
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="shapes or types that disagree"):
        Concerto.load(path)


def test_model_loading_never_unpickles(trained_model, tmp_path, monkeypatch):
    import pickle

    import torch

    def forbidden(*a, **k):
        raise AssertionError("pickle used while loading a model")

    path = trained_model.save(tmp_path / "m")
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert Concerto.load(path).is_trained


@pytest.mark.parametrize("kind", ["int", "float_with_nan", "bool", "int_categories"])
def test_numeric_and_boolean_label_columns_are_kept(sim, kind):
    x = sim[:120].copy()
    types = x.obs["cell_type"].cat.codes.to_numpy()
    column = {"int": types.astype(np.int64), "float_with_nan": np.where(np.arange(120) < 5, np.nan, types),
              "bool": types == 0, "int_categories": pd.Categorical(types)}[kind]
    x.obs["label"] = column
    setup = Concerto(x, label_key="label").setup
    from scconcerto.data import label_codes

    codes = label_codes(x, setup)["label"]
    names = np.asarray(setup.labels["label"], dtype=object)
    present = pd.Series(column).notna().to_numpy()
    assert (codes[~present] == -1).all() and (codes[present] >= 0).all()
    np.testing.assert_array_equal(names[codes[present]], pd.Series(column)[present].astype(str).to_numpy())
    before = x.obs["label"].copy()
    label_codes(x, setup)
    pd.testing.assert_series_equal(x.obs["label"], before)  # the input column is not modified


def test_classifier_trains_on_integer_labels(sim):
    x = sim[:160].copy()
    x.obs["label"] = x.obs["cell_type"].cat.codes.astype(np.int64)
    model = Concerto(x, label_key="label").train(epochs=1, progress=False, device="cpu", positive_neighbors=0)
    model.fit_classifier(epochs=1, progress=False, device="cpu")
    summary = model.annotation_summary
    assert summary["classes"] == ["0", "1", "2", "3"]
    assert summary["n_train"] + summary["n_validation"] == 160


# ------------------------------------------------------------------ arguments
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, trained_model, sim):
    root = tmp_path_factory.mktemp("args")
    data = root / "cells.h5ad"
    sim[:80].copy().write_h5ad(data)
    return trained_model.save(root / "model"), data, root


@pytest.mark.parametrize("argv, message", [
    (["train", "{data}", "--epochs", "0"], "epochs"),
    (["train", "{data}", "--epochs", "-1"], "epochs"),
    (["train", "{data}", "--lr", "nan"], "lr"),
    (["train", "{data}", "--seed", "-1"], "seed"),
    (["train", "{data}", "--seed", str(2**70)], "seed"),
    (["train", "{data}", "--precision", "fp7"], "precision"),
    (["train", "{data}", "--strategy", "gossip"], "strategy"),
    (["train", "{data}", "--device", "tpu9"], "device"),
    (["map", "{model}", "{data}", "--seed", "-1"], "seed"),
    (["map", "{model}", "{data}", "--levels", "cell_type,cell_type"], "twice"),
    (["map", "{model}", "{data}", "--batch-key", "nope"], r"'nope' is not a column .*\['cell_type', 'batch'\]"),
    (["embed", "{model}", "{data}", "--batch-key", "nope"], "'nope' is not a column"),
])
def test_bad_arguments_are_one_paragraph_exit_2(cli_files, argv, message, capsys, tmp_path):
    import re

    from scconcerto.cli import main

    model, data, _ = cli_files
    out = tmp_path / "out"
    argv = [a.format(model=model, data=data) for a in argv] + ["--out", str(out)]
    if argv[0] == "train":
        argv += ["--no-progress"] + ([] if "--device" in argv else ["--device", "cpu"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("command, size", [("train", "0"), ("embed", "0"), ("map", "0"), ("map", "-5")])
def test_a_batch_size_below_one_is_refused_not_taken_for_the_default(cli_files, command, size, capsys, tmp_path):
    from scconcerto.cli import main

    model, data, _ = cli_files
    argv = [command, *([] if command == "train" else [str(model)]), str(data), "--batch-size", size,
            "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:  # argparse's own usage error
        main(argv)
    assert stop.value.code == 2 and "--batch-size: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_cuda_device_without_cuda_is_refused(monkeypatch):
    import torch

    from scconcerto._hardware import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("cuda", "cuda:0", "gpu"):
        with pytest.raises(InputError, match="not available"):
            resolve_device(device)
    assert resolve_device("auto").type == "cpu"


# ------------------------------------------------------------------ odd matrices
def test_all_zero_reference_is_refused(sim):
    x = sim[:50].copy()
    x.X = sp.csr_matrix(x.shape, dtype=np.float32)
    with pytest.raises(InputError, match="only zeros"):
        Concerto(x)


def test_repeated_csr_entries_are_summed_on_a_copy(sim):
    from scconcerto.data.preprocess import csr_rows

    x = sim[:30].copy().X.tocsr()
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    order = np.argsort(np.concatenate([rows, rows]), kind="stable")  # every entry stored twice, as two halves
    doubled = sp.csr_matrix((np.concatenate([x.data, x.data])[order] / 2,
                             np.concatenate([x.indices, x.indices])[order], 2 * x.indptr), shape=x.shape)
    assert not doubled.has_canonical_format and doubled.nnz == 2 * x.nnz
    before = (doubled.data.copy(), doubled.indices.copy(), doubled.indptr.copy())
    m = csr_rows(doubled)
    assert m.has_canonical_format and m.nnz == x.nnz
    np.testing.assert_allclose(m.toarray(), x.toarray(), rtol=1e-6)
    for a, b in zip(before, (doubled.data, doubled.indices, doubled.indptr)):
        np.testing.assert_array_equal(a, b)  # the input is not modified
    a = ad.AnnData(doubled, obs=sim.obs.iloc[:30].copy(), var=sim.var.copy())
    model = Concerto(sim[:200].copy(), batch_key="batch").train(epochs=1, progress=False, device="cpu",
                                                                 positive_neighbors=0, prepare_mapping=False)
    np.testing.assert_allclose(model.embed(a), model.embed(sim[:30].copy()), atol=1e-5)


def test_dense_float16_matrix_is_read_as_float32(sim):
    x = sim[:60].copy()
    half = x.copy()
    half.X = x.X.toarray().astype(np.float16)
    x.X = sp.csr_matrix(half.X.astype(np.float32))  # the same values (counts above 2048 are rounded in float16)
    a, b = Concerto(half, batch_key="batch"), Concerto(x, batch_key="batch")
    assert a.setup == b.setup
    np.testing.assert_array_equal(a.embed(half), b.embed(x))
