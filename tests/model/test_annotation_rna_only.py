"""Annotation of RNA-only cells with an RNA + protein model: the RNA-only calibration, the saved score."""

import logging

import numpy as np
import pytest

from scconcerto import Concerto


@pytest.fixture(scope="module")
def protein_model(sim_protein, tmp_path_factory):
    ref = sim_protein[:400].copy()
    model = Concerto(ref, batch_key="batch", label_key="cell_type", protein_key="protein", seed=0)
    model.train(epochs=15, progress=False, device="cpu")
    model.fit_classifier(label_key="cell_type", epochs=5, progress=False, device="cpu")
    path = tmp_path_factory.mktemp("rna_only") / "model"
    model.save(path)
    return Concerto.load(path)


@pytest.fixture(scope="module")
def rna_query(sim_protein):
    query = sim_protein[400:].copy()
    del query.obsm["protein"]
    return query


def test_rna_only_query_is_predicted_with_the_rna_only_calibration(protein_model, sim_protein, rna_query):
    truth = sim_protein.obs["cell_type"].astype(str).to_numpy()[400:]
    full = protein_model.predict(sim_protein[400:].copy(), inplace=False, device="cpu")
    query = rna_query.copy()
    result = protein_model.predict(query, device="cpu")
    assert full.modalities == "rna+protein" and result.modalities == "rna_only"
    # the thresholds let about 5 % of held-out seen cells through; with the full-modality calibration
    # (before) every RNA-only cell was unknown and 44 % were right
    assert result.unknown.mean() < 0.25
    assert (result.labels.astype(str) == truth).mean() > 0.85
    assert query.uns["scconcerto_annotation"]["modalities"] == "rna_only"


def test_the_score_behind_the_unknown_flag_is_saved(protein_model, rna_query):
    query = rna_query.copy()
    result = protein_model.predict(query, device="cpu")
    score = query.obs["cell_type_unknown_score"].to_numpy()
    threshold = query.uns["scconcerto_annotation"]["unknown_threshold"]
    # the classifier's classes are the reference's labeled ones, so "auto" chose mapping's P(known type)
    assert query.uns["scconcerto_annotation"]["unknown_score"] == "reference"
    np.testing.assert_allclose(score, result.known_prob, rtol=1e-6)
    assert not np.allclose(score, result.typicality)
    np.testing.assert_array_equal(query.obs["cell_type_unknown"].to_numpy(), score < threshold)


def test_the_known_share_moves_the_reference_score_not_its_flags(protein_model, rna_query):
    from scconcerto import InputError

    even = protein_model.predict(rna_query.copy(), device="cpu", inplace=False)
    query = rna_query.copy()
    high = protein_model.predict(query, device="cpu", known_share=0.95)
    assert (high.known_prob >= even.known_prob).all() and high.known_prob.mean() > even.known_prob.mean()
    np.testing.assert_array_equal(high.unknown, even.unknown)
    assert query.uns["scconcerto_annotation"]["known_share"] == 0.95
    with pytest.raises(InputError, match="prior of the 'reference' unknown score"):
        protein_model.predict(rna_query.copy(), device="cpu", unknown_score="knn", known_share=0.9)


def test_a_classifier_without_rna_only_calibration_warns(protein_model, rna_query, caplog):
    import copy

    old = copy.deepcopy(protein_model)
    old.classifier.state.rna_only = None
    old.classifier.feature_bank_rna_only = None
    with caplog.at_level(logging.WARNING, logger="scconcerto"):
        old.predict(rna_query.copy(), inplace=False, device="cpu")
    assert "lacks the model's proteins" in caplog.text and "Fit the classifier again" in caplog.text


def test_predict_with_copy_returns_the_annotated_copy(protein_model, rna_query):
    out = protein_model.predict(rna_query, device="cpu", copy=True)
    assert "cell_type_pred" not in rna_query.obs and "cell_type_pred" in out.obs
    assert out.uns["scconcerto_annotation"]["model_id"] == protein_model.model_id
