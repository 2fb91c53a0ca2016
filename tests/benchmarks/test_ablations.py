"""The ablation command's data variants, development-only guard, and tables (no training here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks import ablations
from benchmarks.tasks.data import simulated


def test_skewed_batches_keep_alternate_halves_of_the_types():
    adata = simulated(n_cells=1200, n_genes=200)
    out = ablations.skewed(adata, keep=0.15, seed=0)
    table = pd.crosstab(out.obs["cell_type"], out.obs["batch"]) / pd.crosstab(adata.obs["cell_type"],
                                                                                adata.obs["batch"])
    whole = table.to_numpy() == 1.0
    assert whole.sum(axis=1).min() >= 1  # every type is kept whole somewhere
    np.testing.assert_allclose(table.to_numpy()[~whole], 0.15, atol=0.1)
    cols = whole.T
    assert (cols[0] != cols[1]).all()  # neighbouring batches keep opposite halves


def test_test_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not development data"):
        ablations.dataset("scclassify_pancreas_wang_xin", tmp_path, {})


def test_variants_equal_to_the_defaults_share_measurements_and_tables_show_the_spread(monkeypatch):
    defaults = ablations.package_defaults()
    same = ablations.Variant("same as default", train={"gene_dropout": defaults["train"]["gene_dropout"]})
    other = ablations.Variant("other", train={"temperature": 0.5})
    assert same.key() == ablations.DEFAULT.key() != other.key()
    family = ablations.Family("toy", "A toy table.", (ablations.DEFAULT, same, other), datasets=("simulated:hard",))
    calls = []

    def fake(adata, variant, seed, mixing=False):
        calls.append((variant.name, seed))
        acc = 0.5 + 0.1 * (variant.name == "other") + 0.01 * seed
        return {"acc": acc, **({"ilisi": 1 - acc} if mixing else {})}

    monkeypatch.setattr(ablations, "unsupervised_scores", fake)
    monkeypatch.setattr(ablations, "hard_simulation", lambda seed=0: simulated(n_cells=120, n_genes=200))
    store: dict = {}
    rows = ablations.run_family(family, [0, 1], None, {}, store, lambda: None)
    assert len(calls) == 4 and len(rows) == 6  # the variant equal to the default is not trained again
    text = ablations.family_table(family, rows)
    assert "| default | 0.505 ± 0.007 |" in text and "| other | 0.605 ± 0.007 | 0.605 | +0.100 | 2 |" in text


def test_a_mixing_table_adds_batch_mixing_and_the_harmony_peer(monkeypatch):
    other = ablations.Variant("other", train={"temperature": 0.5})
    family = ablations.Family("toy", "A toy table.", (ablations.DEFAULT, other), datasets=("simulated:hard",),
                              mixing=True)
    def fake(adata, variant, seed, mixing=False):
        return {"acc": 0.5, "ilisi": 0.3 + 0.2 * (variant is other)}

    monkeypatch.setattr(ablations, "unsupervised_scores", fake)
    monkeypatch.setattr(ablations, "harmony_mixing", lambda adata, seed=0: 0.4)
    monkeypatch.setattr(ablations, "hard_simulation", lambda seed=0: simulated(n_cells=120, n_genes=200))
    store: dict = {}
    text = ablations.family_table(family, ablations.run_family(family, [0, 1], None, {}, store, lambda: None))
    assert "iLISI" in text and "| other | 0.500 ± 0.000 | 0.500 | +0.200 | 2 |" in text
    assert "| Harmony (50 PCs) | 0.400 ± 0.000 |" in text and store["harmony|simulated:hard"]["ilisi"] == 0.4


def test_a_shift_table_reads_the_shift_the_default_training_measured(monkeypatch):
    other = ablations.Variant("other", train={"temperature": 0.5})
    family = ablations.Family("toy", "A toy table.", (ablations.DEFAULT, other), datasets=("simulated:hard",),
                              shifts=True)
    calls = []

    def fake(adata, variant, seed, mixing=False):
        calls.append((variant.name, seed))
        return {"acc": 0.5, "shift": 0.03 + 0.1 * seed}

    monkeypatch.setattr(ablations, "unsupervised_scores", fake)
    monkeypatch.setattr(ablations, "hard_simulation", lambda seed=0: simulated(n_cells=120, n_genes=200))
    # a store from before shifts were kept: the default variant is trained again at the table's seed (the
    # first), the other variant and seeds are not
    store = {f"unsupervised|simulated:hard|{s}|{v.key()}": {"acc": 0.5, "seconds": 1.0}
             for s in (0, 1) for v in (ablations.DEFAULT, other)}
    rows = ablations.run_family(family, [1, 0], None, {}, store, lambda: None)
    assert calls == [("default", 1)]
    assert "| simulated:hard | 0.130 | apart (source) |" in ablations.shift_table(rows, seed=1)
    assert "simulated:hard" not in ablations.shift_table(rows, seed=0)
    calls.clear()
    rows = ablations.run_family(family, [0], None, {}, {}, lambda: None)
    assert "| simulated:hard | 0.030 | together (shared) |" in ablations.shift_table(rows, seed=0)


def test_measurements_taken_and_read_are_told_apart(monkeypatch):
    other = ablations.Variant("other", train={"temperature": 0.5})
    family = ablations.Family("toy", "A toy table.", (ablations.DEFAULT, other), datasets=("simulated:hard",))
    monkeypatch.setattr(ablations, "unsupervised_scores", lambda adata, variant, seed, mixing=False: {"acc": 0.5})
    monkeypatch.setattr(ablations, "hard_simulation", lambda seed=0: simulated(n_cells=120, n_genes=200))
    store = {f"unsupervised|simulated:hard|0|{other.key()}": {"acc": 0.4, "seconds": 1.0}}
    used, taken = set(), set()
    rows = ablations.run_family(family, [0], None, {}, store, lambda: None, used, taken)
    assert taken == {f"unsupervised|simulated:hard|0|{ablations.DEFAULT.key()}"}
    assert used - taken == {f"unsupervised|simulated:hard|0|{other.key()}"}
    assert sorted(r["acc"] for r in rows) == [0.4, 0.5]  # the stored measurement is read, not taken again


def test_a_default_that_measured_no_shift_is_not_trained_again(monkeypatch):
    family = ablations.Family("toy", "A toy table.", (ablations.DEFAULT,), datasets=("simulated:hard",), shifts=True)
    calls = []

    def fake(adata, variant, seed, mixing=False):
        calls.append(seed)
        return {"acc": 0.5, "shift": None}  # one source, or a forced normalization: nothing measured

    monkeypatch.setattr(ablations, "unsupervised_scores", fake)
    monkeypatch.setattr(ablations, "hard_simulation", lambda seed=0: simulated(n_cells=120, n_genes=200))
    store: dict = {}
    ablations.run_family(family, [0], None, {}, store, lambda: None)
    rows = ablations.run_family(family, [0], None, {}, store, lambda: None)
    assert calls == [0]
    assert "simulated:hard" not in ablations.shift_table(rows, seed=0)


def test_datasets_replace_every_familys_own_and_test_data_is_refused(monkeypatch, tmp_path, capsys):
    """``--datasets`` runs the chosen families on the given development sets only; a test set is an error."""
    seen = []
    monkeypatch.setattr(ablations, "unsupervised_scores",
                        lambda adata, variant, seed, mixing=False: seen.append(adata.n_obs) or {"acc": 0.5})
    monkeypatch.setattr(ablations, "hard_simulation", lambda seed=0: simulated(n_cells=120, n_genes=200))
    out = tmp_path / "abl.md"
    assert ablations.main(["--families", "temperature", "--datasets", "simulated:hard", "--seeds", "0",
                           "--out", str(out)]) == 0
    text = out.read_text()
    assert "simulated:hard" in text and "symphony_pbmc_3tech" not in text.split("## temperature")[1]
    assert len(seen) == 4  # the four temperatures (0.1 is the default), on the one data set
    assert ablations.main(["--families", "temperature", "--datasets", "scclassify_pancreas_wang_xin",
                           "--out", str(tmp_path / "no.md")]) == 2
    assert "test data" in capsys.readouterr().err and not (tmp_path / "no.md").exists()
