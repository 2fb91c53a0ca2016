"""The expression space's second opinion on contested votes: which cells, how blended, calibrated alike."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scconcerto.tools import (LabelTransfer, NeighborsResults, blend_votes, contested_rows, l2_normalize, overrule,
                              veto_rows, vote)
from scconcerto.tools import knn
from scconcerto.tools.confidence import AGREEMENT_FEATURE, CORRECTNESS_FEATURES, calibrate_confidence, \
    neighborhood_features
from scconcerto.tools.label_transfer import rare_label_rows, rare_labels, second_opinion, share_of


def transfer_of(votes) -> LabelTransfer:
    votes = np.asarray(votes, dtype=np.float32)
    total = votes.sum(axis=1)
    best = votes.argmax(axis=1)
    conf = np.divide(votes[np.arange(len(votes)), best], total, out=np.zeros(len(votes)), where=total > 0)
    return LabelTransfer(codes=best, confidence=conf.astype(np.float32), votes=votes)


def test_contested_cells_are_those_a_second_opinion_could_overturn():
    tr = transfer_of([[3.0, 2.0, 0.0],   # shares 0.6 / 0.4: margin 0.2
                      [9.0, 1.0, 0.0],   # margin 0.8
                      [0.0, 0.0, 0.0],   # no vote at all
                      [1.0, 1.0, 2.0]])  # 0.5 / 0.25: margin 0.25
    np.testing.assert_array_equal(contested_rows(tr, 0.5), [0, 2, 3])
    np.testing.assert_array_equal(contested_rows(tr, 0.21), [0, 2])
    np.testing.assert_array_equal(contested_rows(transfer_of([[1.0], [0.0]]), 0.5), [1])  # one label: no contest


def test_blend_by_hand_and_only_contested_cells_change():
    tr = transfer_of([[3.0, 2.0], [9.0, 1.0]])
    second = transfer_of([[0.0, 4.0]])  # the expression space's vote of cell 0 only
    out = blend_votes(tr, np.array([0]), second, 0.5)
    # cell 0: 0.6 / 0.4 + 0.5 x (0 / 1) = 0.6 / 0.9 -> label 1, share 0.9 / 1.5; cell 1 keeps its vote
    np.testing.assert_array_equal(out.codes, [1, 0])
    np.testing.assert_allclose(out.confidence, [0.6, 0.9], rtol=1e-6)
    np.testing.assert_allclose(out.votes, [[0.6, 0.9], [0.9, 0.1]], rtol=1e-6)


def test_asking_only_contested_cells_gives_the_labels_of_asking_all():
    rng = np.random.default_rng(0)
    for weight in (0.3, 0.5, 1.0):
        tr = transfer_of(rng.gamma(0.5, size=(2000, 6)) * (rng.random((2000, 1)) > 0.05))
        other = transfer_of(rng.gamma(0.5, size=(2000, 6)))
        everyone = blend_votes(tr, np.arange(2000), other, weight)
        rows = contested_rows(tr, weight)
        asked = blend_votes(tr, rows, transfer_of(other.votes[rows]), weight)
        assert 0 < len(rows) and (weight > 0.3 or len(rows) < 2000)
        np.testing.assert_array_equal(asked.codes, everyone.codes)


def test_calibration_is_unchanged_by_a_second_opinion_that_agrees():
    """With the expression space equal to the embedding, the second opinion repeats the vote:
    blended shares order the labels as before, so the fitted confidence is the same."""
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((4, 12))
    codes = np.repeat(np.arange(4), [120, 100, 80, 60])
    emb = l2_normalize(centers[codes] + 0.6 * rng.standard_normal((len(codes), 12)))
    plain = calibrate_confidence(emb, codes, 4, k=5, seed=0, expression=emb).model
    assert plain.report["seen_accuracy"] < 1.0  # some votes are contested
    for veto in (False, True):  # a unanimous second vote names the winner itself: no veto either
        asked = calibrate_confidence(emb, codes, 4, k=5, seed=0, expression=emb, expression_vote=0.5,
                                     expression_veto=veto).model
        assert asked.report["seen_accuracy"] == plain.report["seen_accuracy"]
        np.testing.assert_allclose(asked.novelty.coef, plain.novelty.coef, rtol=1e-6)
        if not veto:
            np.testing.assert_allclose(asked.correctness.coef, plain.correctness.coef, rtol=1e-6)
            assert asked.threshold == pytest.approx(plain.threshold, rel=1e-6)
        else:  # every cell searched: the correctness also reads the second vote's agreement (here the share)
            assert asked.correctness.features == CORRECTNESS_FEATURES + (AGREEMENT_FEATURE,)


def test_calibration_sees_the_second_opinion():
    """An expression space that separates two types the embedding mixes raises the calibration's accuracy."""
    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(3), [150, 150, 100])
    emb_centers = rng.standard_normal((3, 12))
    emb_centers[1] = emb_centers[0]  # types 0 and 1 share one place in the embedding
    emb = l2_normalize(emb_centers[codes] + 0.5 * rng.standard_normal((len(codes), 12)))
    expr = l2_normalize(rng.standard_normal((3, 20))[codes] + 0.3 * rng.standard_normal((len(codes), 20)))
    plain = calibrate_confidence(emb, codes, 3, k=5, seed=0, expression=expr).model.report["seen_accuracy"]
    asked = calibrate_confidence(emb, codes, 3, k=5, seed=0, expression=expr, expression_vote=0.5
                                 ).model.report["seen_accuracy"]
    assert plain < 0.7 and asked > plain + 0.15  # only cells with a vote margin below 0.5 are asked


def test_the_second_spaces_agreement_tells_right_from_wrong_transfers():
    """Two types the embedding blurs, kept apart in the expression space. With the veto every cell is
    searched there, and the correctness model also reads how much of that vote backs the label given:
    transfers of a query are then ranked right above wrong far better than by the embedding alone."""
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(3), [150, 150, 100])
    q_codes = np.repeat(np.arange(3), [80, 80, 60])
    emb_centers = rng.standard_normal((3, 12))
    emb_centers[1] = emb_centers[0] + 0.35 * rng.standard_normal(12)
    expr_centers = rng.standard_normal((3, 20))

    def draw(c):
        return (l2_normalize(emb_centers[c] + 0.5 * rng.standard_normal((len(c), 12))),
                l2_normalize(expr_centers[c] + 1.3 * rng.standard_normal((len(c), 20))))

    (emb, expr), (q_emb, q_expr) = draw(codes), draw(q_codes)
    nb = knn(q_emb, emb, k=5)
    tr = vote(nb, codes, 3)
    features = neighborhood_features(nb, tr, codes)
    features[AGREEMENT_FEATURE] = share_of(vote(knn(q_expr, expr, k=5), codes, 3), tr.codes)
    right = tr.codes == q_codes
    assert 0.8 < right.mean() < 0.95  # types 0 and 1 are confused in the embedding
    auroc = {}
    for veto in (False, True):
        model = calibrate_confidence(emb, codes, 3, k=5, seed=0, expression=expr, expression_vote=0.5,
                                     expression_veto=veto).model
        assert (AGREEMENT_FEATURE in model.correctness.features) == veto == model.uses_agreement
        auroc[veto] = roc_auc_score(right, model.correctness(features))
    coef = dict(zip(model.correctness.features, model.correctness.coef))
    assert coef[AGREEMENT_FEATURE] > 0
    assert auroc[False] < 0.8 and auroc[True] > 0.95  # measured 0.496 and 1.000


def test_share_of_by_hand():
    tr = transfer_of([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 2.0]])
    np.testing.assert_allclose(share_of(tr, np.array([1, 0, 2])), [0.25, 0.0, 0.5])


def test_veto_by_hand_spares_rare_winners_and_split_votes():
    tr = transfer_of([[5.0, 0.0, 0.0],   # label 0, the second space unanimous for 1: vetoed
                      [3.0, 2.0, 0.0],   # label 0, second space split 4:1 for 1: kept
                      [0.0, 0.0, 5.0],   # label 2 (3 reference cells < k): kept although the second says 0
                      [5.0, 0.0, 0.0],   # second agrees: kept
                      [5.0, 0.0, 0.0]])  # second has no vote: kept
    other = transfer_of([[0.0, 5.0, 0.0], [1.0, 4.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    counts = np.array([50, 40, 3])
    rows = veto_rows(tr, other, counts, k=5)
    np.testing.assert_array_equal(rows, [0])
    out = overrule(tr, rows, other)
    np.testing.assert_array_equal(out.codes, [1, 0, 2, 0, 0])
    np.testing.assert_allclose(out.votes[:2], [[0.0, 1.0, 0.0], [0.6, 0.4, 0.0]])
    np.testing.assert_array_equal(veto_rows(tr, other, np.array([50, 40, 5]), k=5), [0, 2])  # 5 cells: can be
    with pytest.raises(ValueError, match="shape"):
        veto_rows(tr, transfer_of([[1.0, 0.0]]), counts, k=5)


def test_calibration_sees_the_veto():
    """Types 0 and 1 share one place in the embedding but not in the expression space: the veto
    corrects the cells the 0.5 blend cannot reach (unanimous wrong embedding votes)."""
    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(3), [150, 150, 100])
    emb_centers = rng.standard_normal((3, 12))
    emb_centers[1] = emb_centers[0]
    emb = l2_normalize(emb_centers[codes] + 0.5 * rng.standard_normal((len(codes), 12)))
    expr = l2_normalize(rng.standard_normal((3, 20))[codes] + 0.3 * rng.standard_normal((len(codes), 20)))
    blend = calibrate_confidence(emb, codes, 3, k=5, seed=0, expression=expr, expression_vote=0.5
                                 ).model.report["seen_accuracy"]
    veto = calibrate_confidence(emb, codes, 3, k=5, seed=0, expression=expr, expression_vote=0.5,
                                expression_veto=True).model.report["seen_accuracy"]
    assert veto > blend and veto > 0.95


def test_rare_labels_claim_cells_by_a_majority_of_the_second_vote():
    tr = transfer_of([[5.0, 0.0, 0.0],   # second vote 3:2 for label 2 (8 reference cells): claimed
                      [5.0, 0.0, 0.0],   # 2:3 for label 2: a minority, kept
                      [5.0, 0.0, 0.0],   # 3:2 for label 1 (40 cells, not rare): kept
                      [0.0, 0.0, 5.0],   # already label 2: nothing to claim
                      [5.0, 0.0, 0.0]])  # the second has no vote: kept
    other = transfer_of([[2.0, 0.0, 3.0], [3.0, 0.0, 2.0], [2.0, 3.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0]])
    counts = np.array([50, 40, 8])
    np.testing.assert_array_equal(rare_label_rows(tr, other, counts < 20), [0])
    np.testing.assert_array_equal(rare_label_rows(tr, other, counts < 8), [])  # 8 is not below 8
    np.testing.assert_array_equal(rare_label_rows(tr, other, counts < 41), [0, 2])
    np.testing.assert_array_equal(rare_label_rows(tr, other, counts < 20, min_share=0.7), [])  # 0.6
    with pytest.raises(ValueError, match="shape"):
        rare_label_rows(tr, transfer_of([[1.0, 0.0]]), counts < 20)
    with pytest.raises(ValueError, match="one bool per label"):
        rare_label_rows(tr, other, np.array([True]))


def test_rare_labels_have_two_to_fewer_than_the_limit_cells():
    np.testing.assert_array_equal(rare_labels(np.array([0, 1, 2, 19, 20, 500]), 20),
                                  [False, False, True, True, False, False])


def test_second_opinion_vetoes_by_one_vote_and_claims_by_the_other():
    """Blend and rare claim follow ``second``, the veto follows ``veto_vote`` (another space)."""
    tr = transfer_of([[5.0, 0.0, 0.0],   # veto_vote unanimous for 1: vetoed
                      [5.0, 0.0, 0.0],   # second 3:2 for the rare label 2: claimed
                      [3.0, 2.0, 0.0]])  # contested: second's 0:5 for 1 blended in -> 0.6 / 1.4
    second = transfer_of([[5.0, 0.0, 0.0], [2.0, 0.0, 3.0], [0.0, 5.0, 0.0]])
    veto_vote = transfer_of([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [1.0, 4.0, 0.0]])
    counts = np.array([50, 40, 8])
    rows = np.arange(3)
    out, vetoed, claimed = second_opinion(tr, contested_rows(tr, 0.5), rows, second, 0.5, counts, 5,
                                          veto_vote=veto_vote, rare_labels=counts < 20)
    np.testing.assert_array_equal(out.codes, [1, 2, 1])
    np.testing.assert_array_equal(vetoed, [0]) and np.testing.assert_array_equal(claimed, [1])
    np.testing.assert_allclose(out.votes[1], [0.4, 0.0, 0.6])  # the claiming vote's shares
    np.testing.assert_allclose(out.votes[2], [0.6 / 1.5, 0.9 / 1.5, 0.0], rtol=1e-6)  # blended, as shares
    same, vetoed, claimed = second_opinion(tr, contested_rows(tr, 0.5), rows, second, 0.5, counts, 5)
    np.testing.assert_array_equal(same.codes, [0, 0, 1])  # no veto vote of its own, no rare claim
    assert not len(vetoed) and not len(claimed)


def test_calibration_sees_rare_labels_claim_their_cells():
    """A rare type the embedding files under a common one, which the scaled space keeps apart: with the
    claim, the calibration's pseudo-query cells of that type are claimed as at mapping, and left out of the
    fits (no longer wrong transfers there). A scaled space equal to the plain one without the claim changes
    nothing."""
    rng = np.random.default_rng(4)
    codes = np.repeat(np.arange(3), [200, 150, 16])  # type 2: 16 cells (rare), about 8 in the pseudo-reference
    emb_centers = rng.standard_normal((3, 12))
    emb_centers[2] = emb_centers[0]  # the rare type sits inside type 0 in the embedding
    emb = l2_normalize(emb_centers[codes] + 0.5 * rng.standard_normal((len(codes), 12)))
    expr = l2_normalize(emb_centers[codes] + 0.5 * rng.standard_normal((len(codes), 12)))  # as mixed
    scaled = l2_normalize(rng.standard_normal((3, 20))[codes] + 0.3 * rng.standard_normal((len(codes), 20)))
    common = dict(k=5, seed=0, expression=expr, expression_vote=0.5, expression_veto=True)
    before = calibrate_confidence(emb, codes, 3, **common).model
    same = calibrate_confidence(emb, codes, 3, scaled_expression=expr, **common).model
    assert same.report["seen_accuracy"] == before.report["seen_accuracy"]
    np.testing.assert_allclose(same.novelty.coef, before.novelty.coef, rtol=1e-6)
    claimed = calibrate_confidence(emb, codes, 3, scaled_expression=scaled, rare_label_cells=20, **common).model
    assert claimed.report["seen_accuracy"] > before.report["seen_accuracy"] + 0.01
    assert 0 < before.report["n_seen"] - claimed.report["n_seen"] <= 8  # the claimed cells of type 2
