"""The kernel-vote posterior, its maximum-likelihood fit and the bounded EM on the query's proportions."""

import numpy as np
import pytest

from scconcerto import InputError
from scconcerto.mapping import VotePosterior, adjust_to_query_proportions, label_frequencies
from scconcerto.mapping.posterior import class_votes, fit_pool_power, pool_posteriors


def test_class_votes_by_hand():
    sims = np.array([[0.9, 0.8, 0.5], [0.7, -0.2, 0.6]])
    labels = np.array([[0, 1, 0], [2, 1, -1]])
    want = np.array([[1.4, 0.8, 0.0], [0.0, 0.0, 0.7]])  # negative similarity and unlabeled cells: no vote
    np.testing.assert_allclose(class_votes(sims, labels, 3), want)


def test_posterior_by_hand_sums_to_one_and_smooths_toward_the_prior():
    prior = np.array([0.5, 0.3, 0.2])
    model = VotePosterior(alpha=0.5, gamma=2.0, prior=prior, k=2)
    sims = np.array([[0.9, 0.8, 0.95]])
    labels = np.array([[0, 1, 2]])  # the third neighbour is beyond k
    evidence = (np.array([0.9, 0.8, 0.0]) + 0.5 * prior) ** 2
    np.testing.assert_allclose(model.posterior(sims, labels)[0], evidence / evidence.sum())
    # no labeled neighbour: the prior, sharpened by gamma
    np.testing.assert_allclose(model.posterior(sims, np.full((1, 3), -1))[0], prior**2 / (prior**2).sum())


def test_the_most_probable_label_is_the_plain_votes():
    """Whatever its fitted calibration, the posterior picks the plain similarity-weighted vote's winner."""
    from scconcerto.tools import NeighborsResults, vote

    rng = np.random.default_rng(0)
    sims = np.sort(rng.uniform(0.3, 0.95, (500, 5)), axis=1)[:, ::-1]
    reference_codes = rng.integers(0, 4, 2500)
    neighbours = np.arange(2500).reshape(500, 5)
    labels = reference_codes[neighbours]
    plain = vote(NeighborsResults(neighbours, sims.astype(np.float32)), reference_codes, 4).codes
    for alpha, gamma in [(0.001, 0.25), (0.01, 1.0), (0.001, 16.0)]:
        post = VotePosterior(alpha=alpha, gamma=gamma, prior=np.full(4, 0.25), k=5).posterior(sims, labels)
        np.testing.assert_array_equal(post.argmax(axis=1), plain)


def _two_overlapping_types(n: int, seed: int):
    """Candidates of cells of two types whose neighbourhoods overlap: type 1 cells have a share of type 0
    neighbours with lower similarity."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    k = 10
    labels = np.where(rng.random((n, k)) < 0.75, truth[:, None], 1 - truth[:, None])
    sims = np.sort(rng.uniform(0.5, 0.9, (n, k)), axis=1)[:, ::-1]
    sims = np.where(labels == truth[:, None], sims + 0.05, sims)
    order = np.argsort(-sims, axis=1)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(labels, order, 1), truth


def test_fitted_posterior_is_calibrated_on_new_cells_of_the_same_kind():
    sims, labels, truth = _two_overlapping_types(4000, seed=0)
    model = VotePosterior.fit(sims, labels, truth, np.array([0.5, 0.5]), k=10)
    sims2, labels2, truth2 = _two_overlapping_types(4000, seed=1)
    post = model.posterior(sims2, labels2)
    best = post.max(axis=1)
    right = post.argmax(axis=1) == truth2
    # the stated probability matches the share of right labels, overall and in bins (expected calibration error)
    assert abs(right.mean() - best.mean()) < 0.02
    edges = np.quantile(best, np.linspace(0, 1, 6))
    bins = np.clip(np.searchsorted(edges, best, side="right") - 1, 0, 4)
    ece = sum((bins == b).mean() * abs(right[bins == b].mean() - best[bins == b].mean()) for b in range(5))
    assert ece < 0.05
    # better likelihood than a flat vote with the same candidates
    flat = VotePosterior(alpha=1.0, gamma=1.0, prior=np.array([0.5, 0.5]), k=10).posterior(sims2, labels2)
    rows = np.arange(len(truth2))
    assert np.log(post[rows, truth2]).mean() > np.log(flat[rows, truth2]).mean()


def test_posterior_survives_a_dict_round_trip_and_rejects_damage():
    model = VotePosterior(alpha=0.2, gamma=3.0, prior=np.array([0.25, 0.75]), k=7)
    again = VotePosterior.from_dict(model.to_dict())
    assert (again.alpha, again.gamma, again.k) == (0.2, 3.0, 7)
    np.testing.assert_array_equal(again.prior, model.prior)
    for bad in ({**model.to_dict(), "prior": [0.5, 0.6]}, {**model.to_dict(), "gamma": -1.0},
                {**model.to_dict(), "k": 0}):
        with pytest.raises(ValueError):
            VotePosterior.from_dict(bad)


def test_em_moves_the_prior_toward_a_query_rich_in_one_type_but_at_most_half_way():
    rng = np.random.default_rng(0)
    n = 5000
    truth = (rng.random(n) < 0.9).astype(int)  # the query is 90 % type 1; the reference 50/50
    # posteriors under the 50/50 prior: informative but noisy
    signal = np.where(truth == 1, 1.0, -1.0) + rng.normal(0, 1.5, n)
    p1 = 1 / (1 + np.exp(-2 * signal / 1.5**2))
    post = np.column_stack([1 - p1, p1])
    adjusted, q = adjust_to_query_proportions(post, np.array([0.5, 0.5]))
    assert 0.55 < q[1] < 0.7  # moved toward 0.9, held at most half-way by the reference's pseudo-cells
    strong, q_free = adjust_to_query_proportions(post, np.array([0.5, 0.5]), strength=0.0)
    assert q_free[1] > 0.85  # the unbounded EM finds the query's own proportion
    assert (adjusted.argmax(1) == truth).mean() > (post.argmax(1) == truth).mean()
    np.testing.assert_allclose(adjusted.sum(axis=1), 1.0)


def test_em_keeps_absent_labels_absent_and_checks_shapes():
    post = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    adjusted, q = adjust_to_query_proportions(post, np.array([0.5, 0.5, 0.0]))
    assert q[2] == 0 and (adjusted[:, 2] == 0).all()
    with pytest.raises(InputError):
        adjust_to_query_proportions(post, np.array([0.5, 0.5]))


def test_label_frequencies_skip_unlabeled_cells():
    np.testing.assert_allclose(label_frequencies(np.array([0, 0, 1, -1, 2, 2]), 4), [0.4, 0.2, 0.4, 0.0])
    np.testing.assert_allclose(label_frequencies(np.array([-1, -1]), 2), [0.5, 0.5])


def test_pooled_posterior_by_hand():
    p1 = np.array([[0.6, 0.4, 0.0], [0.5, 0.25, 0.25]])
    p2 = np.array([[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]])
    pooled = pool_posteriors([p1, p2], tau=1.0)
    np.testing.assert_allclose(pooled[0], [0.12 / 0.44, 0.32 / 0.44, 0.0])  # a label both rule out stays out
    np.testing.assert_allclose(pooled[1], np.array([0.25, 0.0625, 0.0625]) / 0.375)
    half = pool_posteriors([p1, p2], tau=0.5)
    np.testing.assert_allclose(half[0], np.sqrt([0.12, 0.32, 0.0]) / np.sqrt([0.12, 0.32]).sum())
    np.testing.assert_allclose(pool_posteriors([p1], tau=1.0), p1)


def test_pool_power_undoes_counting_one_opinion_twice():
    """Two copies of one calibrated opinion, multiplied, are too sure by a square: the fitted power is 1/2."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.0, (20_000, 4))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    truth = (rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    assert abs(fit_pool_power([p, p], truth) - 0.5) < 0.05
    assert abs(fit_pool_power([p], truth) - 1.0) < 0.1
    with pytest.raises(InputError):
        fit_pool_power([p[:0]], truth[:0])


def test_smoothed_targets_by_hand():
    from scconcerto.mapping.posterior import smoothed_targets

    np.testing.assert_allclose(smoothed_targets(np.array([2, 0]), 3, 0.2), [[0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])
    np.testing.assert_array_equal(smoothed_targets(np.array([1]), 3, 0.0), [[0.0, 1.0, 0.0]])
    with pytest.raises(InputError):
        smoothed_targets(np.array([0]), 2, 1.0)


def test_platts_correction_keeps_a_few_perfect_held_out_cells_from_making_the_vote_certain():
    """Eleven held-out cells, each voted for its own label by all five neighbours: under the plain likelihood the
    vote becomes certain; with the 1 / (n + 2) correction it is sure but not certain, and with a thousand such
    cells the correction barely binds."""

    def separated(n):
        truth = np.arange(n) % 3
        return np.full((n, 5), 0.9), np.repeat(truth[:, None], 5, axis=1), truth

    prior = np.full(3, 1 / 3)
    plain = VotePosterior.fit(*separated(11), prior, k=5)
    corrected = VotePosterior.fit(*separated(11), prior, k=5, smoothing=1 / 13)
    many = VotePosterior.fit(*separated(1000), prior, k=5, smoothing=1 / 1002)
    sure = {name: fit.posterior(*separated(3)[:2]).max(axis=1)
            for name, fit in (("plain", plain), ("corrected", corrected), ("many", many))}
    assert np.all(sure["plain"] > 0.9999)
    assert np.all((sure["corrected"] > 0.5) & (sure["corrected"] < 1 - 1 / 26))  # sure, never certain
    assert np.all(sure["many"] > sure["corrected"])
