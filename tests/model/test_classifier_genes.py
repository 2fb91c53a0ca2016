"""A classifier fitted for a target learns from the genes the target has, and reads only those genes later."""

import copy
import json
import logging

import numpy as np
import pandas as pd
import pytest

from scconcerto import Concerto, ModelFileError
from scconcerto.model.storage import config_checksum

FAST = dict(progress=False, device="cpu")


@pytest.fixture(scope="module")
def split(sim):
    test = np.random.default_rng(5).random(sim.n_obs) < 0.3
    return sim[~test].copy(), sim[test].copy()


@pytest.fixture(scope="module")
def panel(trained_model, split):
    """A target with two thirds of the model's genes, and the classifier fitted for it."""
    train, query = split
    genes = list(trained_model.setup.genes)
    kept = [g for g, keep in zip(genes, np.random.default_rng(1).random(len(genes)) < 2 / 3) if keep]
    target = query[:, [g for g in query.var_names if g in set(kept)]].copy()
    model = copy.deepcopy(trained_model).fit_classifier(train, label_key="cell_type", target=target, epochs=3,
                                                        seed=0, **FAST)
    return model, target, kept


def _scrambled(adata, genes):
    """``adata`` with the values of ``genes`` exchanged among those genes (every cell's total kept)."""
    out = adata.copy()
    cols = np.flatnonzero(out.var_names.isin(genes))
    x = out.X.toarray()
    x[:, cols] = x[:, np.random.default_rng(0).permutation(cols)]
    out.X = type(adata.X)(x)
    return out


def test_the_classifier_learns_from_the_genes_the_target_has(panel, split):
    model, _, kept = panel
    state = model.classifier.state
    assert state.genes == kept  # in the model's order
    assert state.n_target == 0 and state.target_sources == []  # not adapted (weight 0): only its genes were used
    # the genes it does not read make no difference to what it predicts
    query = split[1]
    others = [g for g in model.setup.genes if g not in set(kept)]
    before = model.predict(query, inplace=False).probabilities
    np.testing.assert_allclose(model.predict(_scrambled(query, others), inplace=False).probabilities, before,
                               atol=1e-6)


def test_without_a_target_every_gene_is_read(trained_model, split, panel):
    train, query = split
    model = copy.deepcopy(trained_model).fit_classifier(train, label_key="cell_type", epochs=3, seed=0, **FAST)
    assert model.classifier.state.genes is None
    others = [g for g in model.setup.genes if g not in set(panel[2])]
    before = model.predict(query, inplace=False).probabilities
    assert not np.allclose(model.predict(_scrambled(query, others), inplace=False).probabilities, before, atol=1e-6)
    plain = copy.deepcopy(trained_model).fit_classifier(train, label_key="cell_type", target=panel[1], epochs=3,
                                                        seed=0, shared_genes=False, **FAST)
    assert plain.classifier.state.genes is None


def test_a_dataset_lacking_the_classifiers_genes_is_warned_about(panel, trained_model, split, caplog):
    train, query = split
    model = copy.deepcopy(trained_model).fit_classifier(train, label_key="cell_type", epochs=3, seed=0, **FAST)
    with caplog.at_level(logging.WARNING, logger="scconcerto"):
        model.predict(panel[1], inplace=False)
    assert "genes the classifier learned from" in caplog.text and "--target" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scconcerto"):
        panel[0].predict(panel[1], inplace=False)  # fitted for it: it has every gene this classifier reads
    assert "genes the classifier learned from" not in caplog.text


def test_adaptation_reads_the_shared_genes_too(trained_model, split, panel):
    train, _ = split
    model = copy.deepcopy(trained_model).fit_classifier(train, label_key="cell_type", target=panel[1], epochs=2,
                                                        consistency_weight=0.5, collapse_ratio=0, seed=0, **FAST)
    assert model.classifier.state.genes == panel[2] and model.classifier.state.n_target == panel[1].n_obs


def test_the_genes_are_saved_and_foreign_ones_refused(panel, split, tmp_path):
    model, _, kept = panel
    query = split[1]
    before = model.predict(query, inplace=False).probabilities
    model.save(tmp_path / "m")
    loaded = Concerto.load(tmp_path / "m")
    assert loaded.classifier.state.genes == kept
    np.testing.assert_array_equal(loaded.predict(query, inplace=False).probabilities, before)
    config_path = tmp_path / "m" / "config.json"
    good = json.loads(config_path.read_text())
    for genes in (kept[:-1] + ["NOT_A_MODEL_GENE"], kept + kept[:1], []):
        bad = copy.deepcopy(good)
        bad["classifier"]["genes"] = genes
        bad["config_checksum"] = config_checksum(bad)
        config_path.write_text(json.dumps(bad))
        with pytest.raises(ModelFileError, match="classifier.genes"):
            Concerto.load(tmp_path / "m")


def test_with_only_the_targets_species_it_learns_from_the_genes_with_a_1_to_1_ortholog(sim):
    from scconcerto.data.genes import gene_table, matchable_in, ortholog_table

    # the simulated genes named after human genes: half with a mouse 1:1 ortholog, half without
    human = pd.Series(gene_table("human")["symbol"].drop_duplicates())
    with_one = human[human.isin(ortholog_table()["human"])].iloc[:150].tolist()
    without = human[~human.isin(ortholog_table()["human"])].iloc[:150].tolist()
    named = sim.copy()
    named.var_names = with_one + without
    model = Concerto(named, batch_key="batch", label_key="cell_type", seed=0).train(epochs=3, **FAST)
    model.fit_classifier(label_key="cell_type", target_species="mouse", epochs=2, seed=0, **FAST)
    expected = [g for g, ok in zip(model.setup.genes, matchable_in(model.setup.genes, "mouse")) if ok]
    assert model.classifier.state.genes == expected and set(expected) <= set(with_one) and len(expected) > 100
