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
