"""The query's label proportions by EM, and the vote adjusted to them."""

import numpy as np
import pytest

from scconcerto.tools import LabelTransfer, adjust_to_proportions, knn, vote
from scconcerto.tools.label_shift import query_proportions, reweighted, sharpened


def gaussian_posteriors(n: int, query_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two unit-variance classes at -1 and +1 in 1-D: exact posteriors under 50/50 priors, for a query drawn
    with ``query_share`` of class 0. Returns (posteriors, true classes)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) >= query_share).astype(int)
    x = np.where(y == 0, -1.0, 1.0) + rng.normal(size=n)
    like = np.exp(-0.5 * (x[:, None] - np.array([-1.0, 1.0])) ** 2)
    return like / like.sum(axis=1, keepdims=True), y


def test_em_recovers_the_query_proportions_that_the_mean_posterior_misses():
    post, _ = gaussian_posteriors(20_000, 0.8, seed=0)
    naive = post.mean(axis=0)[0]
    q = query_proportions(post, np.array([0.5, 0.5]))
    assert naive < 0.72  # the posteriors under 50/50 priors pull the plain mean towards 0.5
    assert abs(q[0] - 0.8) < 0.02 and q.sum() == pytest.approx(1.0)
    # the estimate is a fixed point of the EM step
    np.testing.assert_allclose(reweighted(post, q, np.array([0.5, 0.5])).mean(axis=0), q, atol=1e-5)
    # a query with the reference's proportions stays there
    same = query_proportions(gaussian_posteriors(20_000, 0.5, seed=1)[0], np.array([0.5, 0.5]))
    assert abs(same[0] - 0.5) < 0.02


def test_one_hot_rows_give_their_frequencies_and_a_sample_of_mixed_rows_stands_for_all():
    one_hot = np.eye(3)[[0, 0, 1, 2, 2, 2]]
    np.testing.assert_allclose(query_proportions(one_hot, np.array([0.2, 0.3, 0.5])), [2 / 6, 1 / 6, 3 / 6])
    assert query_proportions(np.zeros((4, 2)), np.array([1.0, 3.0])).tolist() == [0.25, 0.75]  # no votes
    post, _ = gaussian_posteriors(20_000, 0.7, seed=2)
    full = query_proportions(post, np.array([0.5, 0.5]))
    sampled = query_proportions(post, np.array([0.5, 0.5]), max_mixed=2_000, seed=0)
    assert abs(full[0] - sampled[0]) < 0.02 and not np.array_equal(full, sampled)


def test_adjusted_shares_by_hand_and_unanimous_cells_keep_their_label():
    votes = np.array([[5.0, 0.0], [5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [3.0, 2.0], [2.0, 3.0], [0.0, 0.0]])
    total = votes.sum(1)
    tr = LabelTransfer(codes=votes.argmax(1), confidence=np.where(total > 0, votes.max(1) / np.maximum(total, 1), 0),
                       votes=votes.astype(np.float32))
    out, q = adjust_to_proportions(tr, np.array([10, 30]), temperature=2.0)
    shares = votes / np.maximum(total, 1)[:, None]
    np.testing.assert_allclose(q, query_proportions(sharpened(shares, 2.0), np.array([0.25, 0.75])))
    expected = shares * np.sqrt(q / np.array([0.25, 0.75]))
    expected = np.divide(expected, expected.sum(1, keepdims=True), out=np.zeros_like(expected),
                         where=expected.sum(1, keepdims=True) > 0)
    np.testing.assert_allclose(out.votes, expected, rtol=1e-6)
    # the query is mostly label 0 where the reference is mostly label 1: the 2:3 cell goes to label 0
    assert q[0] > 0.5 and out.codes.tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert out.confidence[-1] == 0  # no vote stays no vote
    with pytest.raises(ValueError, match="one positive count per label"):
        adjust_to_proportions(tr, np.array([1, 2, 3]))


def test_a_query_rich_in_one_type_is_labelled_better_after_the_adjustment():
    """Two overlapping types in a 2-D embedding; the reference is 50/50, the query 90/10. Cells in the
    overlap are called by their neighbours' 50/50 mix; under the query's own proportions most are type 0."""
    rng = np.random.default_rng(3)
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])

    def cells(n0, n1):
        y = np.array([0] * n0 + [1] * n1)
        return centres[y] + rng.normal(scale=0.6, size=(len(y), 2)), y

    ref, ref_y = cells(2000, 2000)
    query, query_y = cells(2700, 300)
    plain = vote(knn(query, ref, k=5), ref_y, 2)
    adjusted, q = adjust_to_proportions(plain, np.bincount(ref_y))
    acc_plain, acc_adjusted = (plain.codes == query_y).mean(), (adjusted.codes == query_y).mean()
    assert 0.8 < q[0] < 0.95  # from the reference's 0.5 towards the truth (0.9); measured 0.839
    assert acc_adjusted > acc_plain + 0.015 and acc_adjusted > 0.9  # measured 0.910 vs 0.883
