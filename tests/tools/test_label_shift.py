import numpy as np
import pytest

from scconcerto.tools.label_shift import balancing_weights, subsample_per_group, weighted_moments


def test_weights_by_hand():
    # query 3:1 against a 1:1 reference -> raw ratios 0.5/0.75 = 2/3 and 0.5/0.25 = 2, mean (3 * 2/3 + 2) / 4 = 1
    w = balancing_weights(np.array([0, 0, 0, 1]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0])
    # a query with the reference's composition is left as it is
    np.testing.assert_allclose(balancing_weights(np.array([0, 1, 1, 0]), np.array([0.5, 0.5])), 1.0)
    # a type rare in the query is capped at 20x before normalizing
    pred = np.array([0] * 999 + [1])
    raw = np.clip(np.array([0.5 / 0.999] * 999 + [0.5 / 0.001]), 0.05, 20.0)
    np.testing.assert_allclose(balancing_weights(pred, np.array([0.5, 0.5])), raw / raw.mean())
    assert balancing_weights(np.array([], dtype=int), np.array([1.0])).size == 0


def test_moments_equal_numpy_for_equal_weights_and_do_not_depend_on_the_weights_scale():
    x = np.random.default_rng(0).normal(size=(50, 3))
    mean, var = weighted_moments(x)
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(var, x.var(0, ddof=1))  # unbiased, as BN's running variance
    w = np.random.default_rng(1).uniform(0.1, 3, size=50)
    m1, v1 = weighted_moments(x, w)
    m3, v3 = weighted_moments(x, 3 * w)
    np.testing.assert_allclose(m1, (w[:, None] * x).sum(0) / w.sum())
    np.testing.assert_allclose(m1, m3)
    np.testing.assert_allclose(v1, v3)


def test_balanced_moments_are_those_of_the_reference_mix():
    """Two types with different hidden means; a query 90 % type 0 reweighted to the reference's 50/50 mix has
    the 50/50 mean, where its plain mean is pulled to type 0."""
    rng = np.random.default_rng(2)
    centres = np.array([[3.0, 0.0], [-3.0, 1.0]])
    types = np.array([0] * 9000 + [1] * 1000)
    hidden = centres[types] + rng.normal(scale=0.5, size=(types.size, 2))
    plain, _ = weighted_moments(hidden)
    balanced, var = weighted_moments(hidden, balancing_weights(types, np.array([0.5, 0.5])))
    target = centres.mean(0)
    assert np.abs(plain - target).max() > 2.0
    np.testing.assert_allclose(balanced, target, atol=0.05)
    # the variance of an equal mix of the two clusters: 0.25 within, plus the spread of the centres
    np.testing.assert_allclose(var, 0.25 + ((centres - target) ** 2).mean(0), rtol=0.05)


def test_subsample_keeps_small_groups_whole_and_is_seeded():
    groups = np.array([0] * 10 + [1] * 3 + [2] * 30)
    rows = subsample_per_group(groups, 5, seed=0)
    assert np.all(np.diff(rows) > 0)
    assert np.bincount(groups[rows]).tolist() == [5, 3, 5]
    assert np.array_equal(rows, subsample_per_group(groups, 5, seed=0))
    assert not np.array_equal(rows, subsample_per_group(groups, 5, seed=1))
    assert subsample_per_group(groups, 100, seed=0).tolist() == list(range(groups.size))


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_inputs(n):
    mean, var = weighted_moments(np.ones((n, 2)))
    np.testing.assert_allclose(mean, 1.0)
    assert np.all(var == 0)
