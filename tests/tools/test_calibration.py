"""Temperature scaling, ECE, unknown threshold and AUROC (tools/calibration.py)."""

import numpy as np
import pytest
from scipy.special import softmax

from scconcerto import InputError
from scconcerto.tools.calibration import (empirical_cdf, energy_confidence, expected_calibration_error,
                                          feature_knn_similarity, fit_temperature, max_softmax,
                                          probability_to_log_odds, rejection_threshold, scaled_probabilities,
                                          score_quantiles, top_class_log_odds, unknown_auroc)


def _sample(n=4000, n_classes=4, true_t=2.5, seed=0):
    """Logits whose labels are drawn from softmax(logits / true_t): calibrated exactly at T = true_t."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, size=(n, n_classes))
    p = softmax(logits / true_t, axis=1)
    labels = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, labels


def test_fit_temperature_recovers_the_generating_temperature():
    logits, labels = _sample(true_t=2.5)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)
    logits, labels = _sample(true_t=0.5, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(0.5, rel=0.1)


def test_temperature_scaling_lowers_the_calibration_error_on_fresh_cells():
    logits, labels = _sample(true_t=3.0)
    t = fit_temperature(logits[:2000], labels[:2000])
    before = expected_calibration_error(scaled_probabilities(logits[2000:]), labels[2000:])
    after = expected_calibration_error(scaled_probabilities(logits[2000:], t), labels[2000:])
    assert before > 0.1 and after < 0.03


def test_ece_by_hand():
    # bin of 0.9 (two cells, one correct): |0.5 - 0.9|; bin of 0.6 (one correct cell): |1 - 0.6|
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    labels = np.array([0, 1, 1])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx((2 * 0.4 + 1 * 0.4) / 3)
    perfect = np.eye(3)
    assert expected_calibration_error(perfect, np.arange(3)) == 0.0


def test_probabilities_sum_to_one_and_log_odds_rank_like_the_confidence():
    logits, _ = _sample(n=200)
    p = scaled_probabilities(logits, 0.7)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    conf = max_softmax(logits, 0.7)
    lo = top_class_log_odds(logits, 0.7)
    np.testing.assert_allclose(1 / (1 + np.exp(-lo)), conf, atol=1e-6)
    # resolvable where the probability rounds to one
    sharp = np.array([[0.0, 60.0], [0.0, 70.0]])
    assert max_softmax(sharp)[0] == max_softmax(sharp)[1] == 1.0
    assert top_class_log_odds(sharp)[0] == pytest.approx(60.0) and top_class_log_odds(sharp)[1] == pytest.approx(70.0)
    assert probability_to_log_odds(0.5) == 0.0 and probability_to_log_odds(1.0) == np.inf


def test_rejection_threshold_rejects_the_requested_fraction_of_held_out_cells():
    conf = np.random.default_rng(0).random(10_000)
    thr = rejection_threshold(conf, 0.05)
    assert (conf < thr).mean() == pytest.approx(0.05, abs=0.002)
    with pytest.raises(InputError):
        rejection_threshold(conf, 1.5)
    with pytest.raises(InputError):
        rejection_threshold(np.array([]))


def test_unknown_auroc_perfect_chance_and_inverted():
    conf = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    assert unknown_auroc(conf, [0, 0, 0, 1, 1]) == 1.0
    assert unknown_auroc(conf, [1, 1, 0, 0, 0]) == 0.0
    assert unknown_auroc(np.ones(4), [0, 1, 0, 1]) == 0.5
    with pytest.raises(InputError, match="both"):
        unknown_auroc(conf, np.zeros(5))


def test_energy_is_logsumexp_and_invalid_inputs_are_clear_errors():
    logits = np.array([[0.0, np.log(3.0)]])
    assert energy_confidence(logits)[0] == pytest.approx(np.log(4.0))
    with pytest.raises(InputError, match="one class code"):
        fit_temperature(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(InputError, match="label codes"):
        expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 2]))
    with pytest.raises(InputError, match="matrix"):
        scaled_probabilities(np.zeros(3))


def test_empirical_cdf_from_quantiles():
    values = np.arange(101, dtype=float)  # 0..100
    q = score_quantiles(values, n=11)
    np.testing.assert_allclose(q, np.arange(0, 101, 10))
    np.testing.assert_allclose(empirical_cdf([-5, 0, 25, 100, 500], q), [0.0, 0.0, 0.25, 1.0, 1.0])


def test_feature_knn_similarity_is_the_kth_nearest_cosine():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    query = np.array([[2.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(feature_knn_similarity(query, bank, k=1), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(feature_knn_similarity(query, bank, k=2), [np.sqrt(0.5), -np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(feature_knn_similarity(query, bank, k=10), [0.0, -1.0], atol=1e-6)  # k capped
    with pytest.raises(InputError, match="empty"):
        feature_knn_similarity(query, np.zeros((0, 2)))
