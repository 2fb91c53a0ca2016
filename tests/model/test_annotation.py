"""Supervised annotation on the model: fine-tuning, calibration, unknown rejection, domain adaptation, CV."""

import copy
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scconcerto import Concerto, InputError, ModelFileError
from scconcerto.datasets import simulate
from scconcerto.model.classifier import CellTypeClassifier, stratified_holdout
from scconcerto.tools import knn, vote
from scconcerto.tools.calibration import expected_calibration_error, scaled_probabilities, unknown_auroc

FAST = dict(progress=False, device="cpu")


@pytest.fixture(scope="module")
def hard():
    """A harder simulation (few, weak markers, shallow): an untrained network's embedding separates types poorly."""
    adata = simulate(600, 300, n_types=4, n_batches=2, seed=3, markers_per_type=4, mean_depth=500)
    test = np.random.default_rng(0).random(adata.n_obs) < 0.35
    return adata[~test].copy(), adata[test].copy()


@pytest.fixture(scope="module")
def e2e_model(hard):
    """End-to-end classifier (no pre-training) on the training part of ``hard``."""
    train, _ = hard
    model = Concerto(train, batch_key="batch", label_key="cell_type")
    return model.fit_classifier(pretrain=False, epochs=12, validation_fraction=0.2, seed=0, **FAST)


def _truth(adata):
    return adata.obs["cell_type"].astype(str).to_numpy()


def test_classifier_beats_knn_on_the_untrained_embedding(hard, e2e_model):
    train, test = hard
    untrained = Concerto(train, batch_key="batch", label_key="cell_type")
    classes = sorted(set(_truth(train)))
    codes = pd.Categorical(_truth(train), categories=classes).codes.astype(np.int64)
    transfer = vote(knn(untrained.embed(test), untrained.embed(train), k=5), codes, len(classes))
    knn_acc = (np.asarray(classes)[transfer.codes] == _truth(test)).mean()
    clf_acc = (e2e_model.predict(test, inplace=False).labels == _truth(test)).mean()
    assert clf_acc > 0.85 and clf_acc > knn_acc + 0.2


def test_predict_writes_the_documented_outputs_and_probabilities_sum_to_one(hard, e2e_model, tmp_path):
    _, test = hard
    query = test.copy()
    result = e2e_model.predict(query)
    classes = e2e_model.annotation_summary["classes"]
    proba = query.obsm["cell_type_proba"]
    assert proba.shape == (query.n_obs, len(classes))
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert list(query.uns["cell_type_proba_classes"]) == classes
    np.testing.assert_array_equal(query.obs["cell_type_pred"].astype(str), np.asarray(classes)[proba.argmax(1)])
    np.testing.assert_allclose(query.obs["cell_type_confidence"], proba.max(1), rtol=1e-6)
    assert query.obs["cell_type_unknown"].dtype == bool
    np.testing.assert_array_equal(query.obs["cell_type_unknown"], result.unknown)
    assert result.unknown_score == "combined" and (result.familiarity <= 1.0 + 1e-5).all()
    assert ((result.typicality >= 0) & (result.typicality <= 1)).all()
    combined_cut = e2e_model.annotation_summary["thresholds"]["combined"]
    np.testing.assert_array_equal(result.unknown, result.typicality < combined_cut)
    # rejection replaces exactly the unknown cells' labels; extreme thresholds reject every cell or none
    for score, everything, nothing in [("max_softmax", 1.0, 0.0), ("knn", 1.5, -1.5), ("combined", 1.01, 0.0)]:
        rejected = e2e_model.predict(query, reject=True, unknown_score=score, unknown_threshold=everything,
                                     inplace=False)
        assert (rejected.labels == "unknown").all() and rejected.unknown.all()
        kept = e2e_model.predict(query, reject=True, unknown_score=score, unknown_threshold=nothing, inplace=False)
        assert not kept.unknown.any() and "unknown" not in set(kept.labels)
    partial = e2e_model.predict(query, reject=True, unknown_score="max_softmax", unknown_threshold=0.9, inplace=False)
    np.testing.assert_array_equal(partial.unknown, partial.log_odds < np.log(0.9 / 0.1))
    np.testing.assert_array_equal(partial.labels == "unknown", partial.unknown)
    assert query.uns["scconcerto_annotation"]["gene_overlap"]["overlap"] == 1.0
    query.write_h5ad(tmp_path / "annotated.h5ad")  # every output is storable in .h5ad
    back = ad.read_h5ad(tmp_path / "annotated.h5ad")
    np.testing.assert_array_equal(back.obs["cell_type_pred"].astype(str), query.obs["cell_type_pred"].astype(str))


def test_temperature_scaling_calibrates_fresh_cells(hard, e2e_model):
    _, test = hard
    summary = e2e_model.annotation_summary
    codes = pd.Categorical(_truth(test), categories=summary["classes"]).codes
    logits = e2e_model.predict_logits(test)
    before = expected_calibration_error(scaled_probabilities(logits), codes)
    after = expected_calibration_error(scaled_probabilities(logits, summary["temperature"]), codes)
    assert after < 0.1 and after < before
    assert summary["calibration"]["ece_after"] <= summary["calibration"]["ece_before"]
    assert summary["n_validation"] == pytest.approx(0.2 * (summary["n_train"] + summary["n_validation"]), abs=4)


def test_shuffled_gene_order_gives_the_same_predictions(hard, e2e_model):
    _, test = hard
    perm = np.random.default_rng(1).permutation(test.n_vars)
    shuffled = test[:, perm].copy()
    a = e2e_model.predict(test, inplace=False)
    b = e2e_model.predict(shuffled, inplace=False)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)


def test_classifier_state_round_trips_through_its_tensors_and_json(hard, e2e_model):
    _, test = hard
    tensors = e2e_model.classifier.to_tensors()
    assert tensors and all(isinstance(v, torch.Tensor) for v in tensors.values())
    state = json.loads(json.dumps(e2e_model.classifier.state.to_dict()))  # JSON-able, as config.json needs
    restored = CellTypeClassifier.from_tensors(e2e_model, tensors, state)
    a = e2e_model.predict(test, inplace=False)
    b = restored.predict(test, inplace=False)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.familiarity, b.familiarity)
    assert restored.state == e2e_model.classifier.state
    broken = dict(tensors)
    broken.pop("head.linear.bias")
    with pytest.raises(ModelFileError, match="missing"):
        CellTypeClassifier.from_tensors(e2e_model, broken, state)
    resized = dict(tensors, feature_bank=tensors["feature_bank"][:3])
    with pytest.raises(ModelFileError, match="wrong shape"):
        CellTypeClassifier.from_tensors(e2e_model, resized, state)
    with pytest.raises(ModelFileError, match="unknown entries"):
        CellTypeClassifier.from_tensors(e2e_model, tensors, {**state, "old_setting": 1})
    with pytest.raises(ModelFileError, match="knn_k"):
        CellTypeClassifier.from_tensors(e2e_model, tensors, {**state, "knn_k": "ten"})


def test_unseen_type_is_flagged_unknown_and_seen_types_mostly_not(trained_model, sim, tmp_path):
    model = copy.deepcopy(trained_model)  # the session fixture must not change
    test = np.random.default_rng(2).random(sim.n_obs) < 0.3
    held = "type_0"
    train = sim[~test & (sim.obs["cell_type"] != held).to_numpy()].copy()
    model.fit_classifier(train, label_key="cell_type", pretrain=True, epochs=8, seed=0, **FAST)
    assert model.annotation_summary["classes"] == ["type_1", "type_2", "type_3"]
    assert model.annotation_summary["pretrained"] is True
    query = sim[test].copy()
    result = model.predict(query, reject=True)
    unseen = _truth(query) == held
    assert result.unknown[unseen].mean() > 0.6
    assert result.unknown[~unseen].mean() < 0.25
    assert (result.labels[~unseen & ~result.unknown] == _truth(query)[~unseen & ~result.unknown]).mean() > 0.95
    # the "knn" decision's confidence is a vote share: an unseen type's cells find unanimous neighbours of
    # the nearest seen type, so its log-odds is no novelty score; familiarity (k-NN similarity in the
    # classifier's feature space) is, and typicality takes the smaller of the two CDFs
    # (measured 0.98 and 0.98 here; log-odds 0.60)
    for score, floor in [("typicality", 0.9), ("familiarity", 0.9)]:
        assert unknown_auroc(getattr(result, score), unseen) > floor, score
    # with the head's softmax as the posterior, trained as sharply as end to end (lr 1e-3), the log-odds
    # separates them too (measured 0.96; 0.86 at the gentler default rate in these 8 epochs)
    head = copy.deepcopy(trained_model).fit_classifier(train, label_key="cell_type", epochs=8, seed=0, lr=1e-3,
                                                       decision="head", **FAST)
    assert unknown_auroc(head.predict(query, inplace=False).log_odds, unseen) > 0.9
    by_softmax = head.predict(query, unknown_score="max_softmax", inplace=False)
    assert by_softmax.unknown[unseen].mean() > 0.6 and by_softmax.unknown[~unseen].mean() < 0.25
    # the model's own network and reference embedding are untouched by fine-tuning
    np.testing.assert_array_equal(model.embed(sim), trained_model.embed(sim))
    # the classifier is saved and loaded with the model: identical predictions
    loaded = Concerto.load(model.save(tmp_path / "with_classifier"))
    again = loaded.predict(query, reject=True, inplace=False)
    np.testing.assert_array_equal(again.probabilities, result.probabilities)
    np.testing.assert_array_equal(again.unknown, result.unknown)


def test_domain_adaptation_puts_the_target_in_its_own_bn_domains():
    adata = simulate(360, 200, n_types=3, n_batches=3, seed=5, batch_effect=1.0)
    source = adata[adata.obs["batch"] != "batch_2"].copy()
    target = adata[adata.obs["batch"] == "batch_2"].copy()
    target.obs["batch"] = "plate_9"
    model = Concerto(source, batch_key="batch", label_key="cell_type")
    model.fit_classifier(target=target, pretrain=False, epochs=10, seed=0, consistency_weight=1.0, **FAST)
    summary = model.annotation_summary
    assert summary["domains"] == ["batch_0", "batch_1", "plate_9"] and summary["target_sources"] == ["plate_9"]
    assert summary["n_target"] == target.n_obs and model.classifier.network.n_domains == 3
    assert "consistency" in summary["history"][-1]
    # predicting the target uses its trained statistics; another unseen source gets AdaBN on a copy
    acc = (model.predict(target, inplace=False).labels == _truth(target)).mean()
    assert acc > 0.9
    other = target.copy()
    other.obs["batch"] = "elsewhere"
    model.predict(other, inplace=False)
    assert model.classifier.network.n_domains == 3


def test_cross_validation_reports_the_paper_metrics_per_fold():
    adata = simulate(300, 150, n_types=3, n_batches=2, seed=11)
    table = Concerto.cross_validate(adata, "cell_type", folds=2, batch_key="batch", pretrain=False, epochs=6,
                                    **FAST)
    assert list(table["fold"]) == [0, 1] and table["n_test"].sum() == adata.n_obs
    for col in ["accuracy", "macro_f1", "median_f1"]:
        assert table[col].between(0.9, 1.0).all(), table


def test_stratified_holdout_keeps_every_class_in_training():
    codes = np.array([0] * 10 + [1] * 1 + [2] * 3 + [-1] * 4)
    held = stratified_holdout(codes, 0.3, seed=0)
    assert held[:10].sum() == 3 and held[10] == False and held[11:14].sum() == 1  # noqa: E712
    assert not held[codes == -1].any()
    assert not stratified_holdout(codes, 0.0, seed=0).any()


def test_bad_arguments_are_clear_errors(hard, trained_model):
    train, _ = hard
    model = Concerto(train, batch_key="batch", label_key="cell_type")
    with pytest.raises(InputError, match="fit_classifier"):
        model.predict(train)
    with pytest.raises(InputError, match="not in the data"):
        model.fit_classifier(label_key="nope", pretrain=False, **FAST)
    one = train.copy()
    one.obs["single"] = "x"
    with pytest.raises(InputError, match="at least two"):
        model.fit_classifier(one, label_key="single", pretrain=False, **FAST)
    loaded_like = copy.copy(trained_model)
    loaded_like.adata = None
    with pytest.raises(InputError, match="pass `adata=`"):
        loaded_like.fit_classifier(label_key="cell_type")

