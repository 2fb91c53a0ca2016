"""The classifier's expression vote: pooled with its posterior, fitted on held-out cells, saved with it."""

import copy
import hashlib
import json

import numpy as np
import pytest
import safetensors.torch

from scconcerto import Concerto, ModelFileError
from scconcerto.datasets import simulate
from scconcerto.model.classifier import EXPRESSION_BANK
from scconcerto.model.storage import config_checksum
from scconcerto.tools.calibration import scaled_probabilities

FAST = dict(progress=False, device="cpu")


@pytest.fixture(scope="module")
def split(sim):
    test = np.random.default_rng(5).random(sim.n_obs) < 0.3
    return sim[~test].copy(), sim[test].copy()


def _truth(adata):
    return adata.obs["cell_type"].astype(str).to_numpy()


@pytest.fixture(scope="module")
def hard_model():
    """A harder simulation (few, weak markers, shallow), the model trained with its labels, and a query."""
    adata = simulate(600, 300, n_types=4, n_batches=2, seed=3, markers_per_type=4, mean_depth=500)
    test = np.random.default_rng(0).random(adata.n_obs) < 0.35
    model = Concerto(adata[~test].copy(), batch_key="batch", label_key="cell_type", seed=0).train(epochs=15, **FAST)
    return model, adata[test].copy()


def test_a_weak_classifier_is_rescued_by_the_expression_vote(hard_model):
    """A classifier barely trained from a fresh network (its own features near random: 0.54 measured) is right for
    few query cells; pooled with the expression vote among the labeled cells, it follows the expression (0.78)."""
    model, query = hard_model
    model = copy.deepcopy(model).fit_classifier(label_key="cell_type", pretrain=False, epochs=1, lr=1e-6, seed=0,
                                                **FAST)
    opinion = model.classifier.opinion
    assert opinion is not None and opinion.tau > 0
    pooled = model.predict(query, inplace=False)
    own = np.asarray(pooled.classes)[model.classifier.predict_logits(query).argmax(axis=1)]
    truth = _truth(query)
    own_acc, pooled_acc = (own == truth).mean(), (pooled.labels == truth).mean()
    assert pooled_acc > 0.7 and pooled_acc > own_acc + 0.15, (own_acc, pooled_acc)
    np.testing.assert_allclose(pooled.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(pooled.confidence, pooled.probabilities.max(axis=1))
    written = query.copy()
    model.predict(written)
    assert written.uns["scconcerto_annotation"]["expression_vote"] is True


def test_without_the_vote_the_posterior_is_the_classifiers_own(trained_model, split):
    train, query = split
    model = copy.deepcopy(trained_model).fit_classifier(train, label_key="cell_type", epochs=4, seed=0,
                                                        expression_vote=False, **FAST)
    assert model.classifier.opinion is None and model.classifier.state.expression_opinion is None
    pred = model.predict(query, inplace=False)
    own = scaled_probabilities(model.classifier.predict_logits(query), model.classifier.state.temperature)
    np.testing.assert_allclose(pred.probabilities, own, atol=1e-5)


def test_a_model_without_an_expression_space_gives_no_vote(split, caplog):
    train, query = split
    model = Concerto(train, batch_key="batch", label_key="cell_type", seed=0)
    # the paper's views and no mapping prepared: the model holds no scaled expression space
    model.train(epochs=3, positive_neighbors=0, prepare_mapping=False, **FAST)
    with caplog.at_level("INFO", logger="scconcerto"):
        model.fit_classifier(label_key="cell_type", epochs=2, seed=0, **FAST)
    assert model.classifier.opinion is None
    assert "keeps no expression space" in caplog.text
    assert len(model.predict(query, inplace=False).labels) == query.n_obs


def test_the_vote_is_saved_and_a_damaged_one_is_refused(trained_model, split, tmp_path):
    train, query = split
    model = copy.deepcopy(trained_model).fit_classifier(train, label_key="cell_type", epochs=3, seed=0, **FAST)
    before = model.predict(query, inplace=False).probabilities
    model.save(tmp_path / "m")
    loaded = Concerto.load(tmp_path / "m")
    assert loaded.classifier.opinion.to_dict() == model.classifier.opinion.to_dict()
    np.testing.assert_array_equal(loaded.classifier.expression_bank, model.classifier.expression_bank)
    np.testing.assert_array_equal(loaded.predict(query, inplace=False).probabilities, before)

    # tampered as on purpose (checksums updated), so that the content checks are reached
    config_path, weights = tmp_path / "m" / "config.json", tmp_path / "m" / "classifier.safetensors"

    def write(config):
        config["config_checksum"] = config_checksum(config)
        config_path.write_text(json.dumps(config))

    good = json.loads(config_path.read_text())
    bad = copy.deepcopy(good)
    bad["classifier"]["expression_opinion"]["vote"]["prior"] = [0.5, 0.5]  # two classes, not four
    write(bad)
    with pytest.raises(ModelFileError, match="expression_opinion"):
        Concerto.load(tmp_path / "m")
    tensors = safetensors.torch.load_file(weights)
    bank = tensors.pop(EXPRESSION_BANK)
    for edited, message in (({**tensors, EXPRESSION_BANK: bank[:, :-1].contiguous()}, "wrong shape"),
                            (tensors, "missing")):
        safetensors.torch.save_file(edited, weights)
        good["checksums"]["classifier.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        write(good)
        with pytest.raises(ModelFileError, match=message):
            Concerto.load(tmp_path / "m")
