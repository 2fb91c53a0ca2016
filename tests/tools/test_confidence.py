"""Confidence of k-NN label transfer: features, density ratio, calibration by leave-one-type-out."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scconcerto import InputError
from scconcerto.tools import NeighborsResults, knn, l2_normalize, vote
from scconcerto.tools.confidence import (EXPRESSION_FEATURES, MIN_QUERY_CELLS, ConfidenceModel, LogisticScore,
                                         calibrate_confidence, density_ratio, expression_features,
                                         neighborhood_features)


def clusters(centers: np.ndarray, sizes: list[int], noise: float, rng: np.random.Generator):
    codes = np.repeat(np.arange(len(sizes)), sizes)
    x = centers[codes] + noise * rng.standard_normal((len(codes), centers.shape[1]))
    return l2_normalize(x), codes


@pytest.fixture(scope="module")
def toy():
    """A reference of 4 types and a query with the same 4 types plus an unseen fifth."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((5, 16))
    ref, ref_codes = clusters(centers[:4], [150, 120, 100, 80], 0.35, rng)
    query, query_codes = clusters(centers, [40, 40, 40, 40, 60], 0.35, rng)
    return ref, ref_codes, query, query_codes


def test_neighborhood_features_by_hand():
    nb = NeighborsResults(indices=np.array([[0, 1, 2], [2, 3, 0]]),
                          similarities=np.array([[0.9, 0.8, 0.5], [0.7, 0.6, -0.2]], dtype=np.float32))
    codes = np.array([0, 0, 1, -1])
    tr = vote(nb, codes, 2, rare_scaling=False)
    f = neighborhood_features(nb, tr, codes)
    # cell 0: votes 0 -> 1.7, 1 -> 0.5; cell 1: 1 -> 0.7, 0 -> 0 (negative similarity), 3 is unlabeled
    np.testing.assert_allclose(f["vote_share"], [1.7 / 2.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(f["winner_similarity"], [0.85, 0.7], rtol=1e-6)
    np.testing.assert_allclose(f["top_similarity"], [0.9, 0.7], rtol=1e-6)


def test_labels_rarer_than_k_are_scaled_to_a_full_vote():
    nb = NeighborsResults(indices=np.array([[0, 1, 2], [2, 3, 0]]),
                          similarities=np.array([[0.9, 0.8, 0.5], [0.7, 0.6, -0.2]], dtype=np.float32))
    codes = np.array([0, 0, 1, -1])  # label 0 has 2 reference cells, label 1 one; k = 3
    tr = vote(nb, codes, 2)
    np.testing.assert_allclose(tr.votes, [[1.7 * 3 / 2, 0.5 * 3], [0.0, 0.7 * 3]], rtol=1e-6)
    np.testing.assert_allclose(tr.confidence, [2.55 / 4.05, 1.0], rtol=1e-6)
    # a label with one reference cell wins when that cell is the nearest and the others are far ...
    codes = np.array([0, 0, 0, 0, 0, 1])
    one = NeighborsResults(indices=np.array([[5, 0, 1, 2, 3]]),
                           similarities=np.array([[0.9, 0.8, 0.2, 0.1, 0.1]], dtype=np.float32))
    assert vote(one, codes, 2, rare_scaling=False).codes[0] == 0 and vote(one, codes, 2).codes[0] == 1
    # ... or is among the neighbours at more than 4/5 of their mean similarity (5 x 0.75 > 0.9 + 0.9 + 0.85 + 0.85),
    # but not when it is clearly farther (5 x 0.65 < 3.5)
    for sim, winner in ((0.75, 1), (0.65, 0)):
        near = NeighborsResults(indices=np.array([[0, 1, 2, 3, 5]]),
                                similarities=np.array([[0.9, 0.9, 0.85, 0.85, sim]], dtype=np.float32))
        assert vote(near, codes, 2).codes[0] == winner
    # labels with at least k reference cells are not rescaled
    big = np.array([0] * 5 + [1] * 5)
    nb5 = NeighborsResults(indices=np.array([[0, 5, 6, 1, 2]]),
                           similarities=np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], dtype=np.float32))
    np.testing.assert_allclose(vote(nb5, big, 2).votes, vote(nb5, big, 2, rare_scaling=False).votes)


def test_density_ratio_is_low_for_cells_far_from_the_reference_and_size_free(toy):
    ref, ref_codes, query, query_codes = toy
    ratio = density_ratio(query, ref, k=5)
    unseen = query_codes == 4
    assert ratio[unseen].max() < ratio[~unseen].min()
    # a 4x larger reference of the same types does not move the seen cells' ratio (density is matched)
    rng = np.random.default_rng(1)
    big = l2_normalize(np.repeat(ref, 4, axis=0) + 0.05 * rng.standard_normal((4 * len(ref), ref.shape[1])))
    ratio_big = density_ratio(query, big, k=5)
    assert abs(np.median(ratio_big[~unseen]) - np.median(ratio[~unseen])) < 0.05


def test_calibrated_confidence_separates_unseen_type(toy):
    ref, ref_codes, query, query_codes = toy
    result = calibrate_confidence(ref, ref_codes, 4, k=5, seed=0)
    model = result.model
    assert 0.0 < model.threshold < 1.0 and model.report["auroc_seen_vs_left_out"] > 0.9
    # by construction 5 % of the pseudo-query's right transfers fall below the threshold
    right = result.seen_correct
    assert abs(np.mean(result.seen_confidence[right] < model.threshold) - 0.05) < 0.02
    nb = knn(query, ref, k=5)
    tr = vote(nb, ref_codes, 4)
    features = neighborhood_features(nb, tr, ref_codes)
    features["log_density_ratio"] = density_ratio(query, ref, k=5)
    conf = model.confidence(features)
    unseen = query_codes == 4
    assert conf.dtype == np.float32 and conf.min() >= 0 and conf.max() <= 1
    assert roc_auc_score(~unseen, conf) > 0.95
    unknown = conf < model.threshold_for(features)
    assert unknown[unseen].mean() > 0.8 and unknown[~unseen].mean() < 0.2


def test_thresholds_are_set_on_the_seen_cells_when_no_transfer_is_right():
    """Pseudo-query cells that all sit among the other type's cells: no right transfer to take the
    threshold's quantile of, so it is taken over every seen cell instead of failing."""
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:2]
    ref_side = np.repeat([0, 1], 30)
    query_side = np.repeat([0, 1], 10)
    emb = l2_normalize(np.vstack([centres[ref_side], centres[query_side]])
                       + 0.05 * rng.standard_normal((80, 8)).astype(np.float32))
    codes = np.concatenate([ref_side, 1 - query_side])  # the pseudo-query's labels are the other side's
    result = calibrate_confidence(emb, codes, 2, k=5, seed=0, pseudo_query=np.arange(60, 80))
    assert not result.seen_correct.any()
    assert result.model.threshold == pytest.approx(float(np.quantile(result.seen_confidence, 0.05)), abs=1e-6)
    assert 0.0 <= result.model.threshold <= 1.0


def test_confidence_model_survives_json(toy):
    ref, ref_codes, query, _ = toy
    model = calibrate_confidence(ref, ref_codes, 4, k=3, seed=2).model
    again = ConfidenceModel.from_dict(json.loads(json.dumps(model.to_dict())))
    nb = knn(query, ref, k=3)
    features = neighborhood_features(nb, vote(nb, ref_codes, 4), ref_codes)
    np.testing.assert_array_equal(model.confidence(features), again.confidence(features))  # small-query model
    assert again.threshold_small == model.threshold_small and again.k == 3
    assert MIN_QUERY_CELLS > 1


def test_calibration_needs_two_labeled_types(toy):
    ref, _, _, _ = toy
    with pytest.raises(InputError, match="two labeled cell types"):
        calibrate_confidence(ref, np.zeros(len(ref), dtype=np.int64), 1)
    with pytest.raises(InputError, match="one label code per reference cell"):
        calibrate_confidence(ref, np.zeros(3, dtype=np.int64), 1)


def test_logistic_score_is_fitted_in_standardized_units():
    """A feature varying over a few hundredths still gets a decisive weight (the L2 penalty is unit-free)."""
    rng = np.random.default_rng(0)
    target = rng.random(400) < 0.5
    tiny = 0.9 + 0.01 * target + 0.001 * rng.standard_normal(400)  # informative, range ~0.01
    score = LogisticScore.fit({"tiny": tiny}, ("tiny",), target)
    p = score({"tiny": tiny})
    assert p[target].mean() > 0.9 and p[~target].mean() < 0.1
    shifted = LogisticScore.fit({"tiny": tiny * 100 + 5}, ("tiny",), target)  # units do not matter
    np.testing.assert_allclose(shifted({"tiny": tiny * 100 + 5}), p, atol=1e-6)


def test_expression_features_find_a_type_the_embedding_merged():
    """The embedding puts an unseen type onto a seen one; the expression space tells them apart."""
    rng = np.random.default_rng(1)
    emb_centers = rng.standard_normal((4, 16))
    expr_centers = rng.standard_normal((5, 20))
    ref_emb, ref_codes = clusters(emb_centers, [150, 120, 100, 80], 0.35, rng)
    ref_expr, _ = clusters(expr_centers[:4], [150, 120, 100, 80], 0.35, rng)
    q_codes = np.repeat(np.arange(5), [40, 40, 40, 40, 60])
    q_emb = l2_normalize(emb_centers[np.minimum(q_codes, 3) * (q_codes < 4)] + 0.35 * rng.standard_normal((220, 16)))
    q_expr = l2_normalize(expr_centers[q_codes] + 0.35 * rng.standard_normal((220, 20)))  # type 4 lands on type 0
    unseen = q_codes == 4

    def query_features(model, with_expression):
        nb = knn(q_emb, ref_emb, k=5)
        f = neighborhood_features(nb, vote(nb, ref_codes, 4), ref_codes)
        f["log_density_ratio"] = density_ratio(q_emb, ref_emb, k=5)
        if with_expression:  # relative to the query's median cell, as map_query gives them
            f.update({n: v - np.median(v) for n, v in expression_features(q_expr, ref_expr, k=5).items()})
        return model.confidence(f)

    plain = calibrate_confidence(ref_emb, ref_codes, 4, k=5, seed=0).model
    with_expr = calibrate_confidence(ref_emb, ref_codes, 4, k=5, seed=0, expression=ref_expr).model
    assert not plain.uses_expression and with_expr.uses_expression
    assert set(EXPRESSION_FEATURES) <= set(with_expr.novelty.features)
    assert roc_auc_score(~unseen, query_features(plain, False)) < 0.85  # the density ratio alone
    assert roc_auc_score(~unseen, query_features(with_expr, True)) > 0.95
    f = expression_features(ref_expr, ref_expr[:200], k=1)  # matched size: the 200 cells themselves
    np.testing.assert_allclose(f["expression_similarity"][:200], 1.0, atol=1e-5)  # each finds itself


def test_calibration_scales_rare_labels_by_their_pseudo_reference_count():
    """A type with 5 cells, 3 of them pseudo-queries: the 2 left to vote are scaled to a full vote, as a
    reference of 2 such cells would be at mapping (its whole-reference count, 5 = k, would not scale)."""
    rng = np.random.default_rng(0)
    d = 8
    e = np.eye(d)
    rare = e[0] + 0.01 * rng.standard_normal((5, d))
    near = np.cos(0.3) * e[0] + np.sin(0.3) * e[1] + 0.01 * rng.standard_normal((3, d))  # similarity ~0.955
    big = e[2] + 0.3 * rng.standard_normal((97, d))
    other = e[3] + 0.3 * rng.standard_normal((50, d))
    emb = l2_normalize(np.vstack([rare, near, big, other]))
    codes = np.array([0] * 5 + [1] * 100 + [2] * 50)
    pseudo_query = np.concatenate([[0, 1, 2], np.arange(20, 40), np.arange(110, 130)])
    result = calibrate_confidence(emb, codes, 3, k=5, seed=0, pseudo_query=pseudo_query, max_cells=len(pseudo_query))
    # each rare pseudo-query cell: 2 rare neighbours (similarity ~1, scaled by 5/2) beat 3 near ones (~0.955 each)
    assert result.seen_correct[:3].all()
