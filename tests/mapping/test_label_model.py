"""The label decision fitted on held-out reference cells: posterior, P(right), P(known type), thresholds."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scconcerto import InputError
from scconcerto.mapping import LabelModel, agreement, density_ratio, fit_label_model, parent_labels, query_features, \
    within_parent
from scconcerto.mapping.label_model import FALSE_REJECTION
from scconcerto.search.neighbors import exact_search, l2_normalize


def clusters(n_per: int, centres: np.ndarray, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(centres)), n_per)
    x = centres[labels] + rng.normal(0, spread, (len(labels), centres.shape[1]))
    return l2_normalize(x), labels


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (5, 16))
    ref, codes = clusters(120, centres[:4], 0.35, seed=1)  # type 4 is absent from the reference
    query, truth = clusters(60, centres, 0.35, seed=2)
    model = fit_label_model(ref, codes, ["a", "b", "c", "d"], k=10, seed=0)
    return ref, codes, query, truth, model


def decide(model, ref, codes, query):
    sims, idx = exact_search(query, ref, model.posterior.k)
    post = model.posterior.posterior(sims, codes[idx])
    features = query_features(sims, post, query, ref)
    return post, model.decide(features, post)


def test_known_types_are_labelled_and_a_new_type_is_told_apart(world):
    ref, codes, query, truth, model = world
    post, (p_right, p_known, confidence, threshold) = decide(model, ref, codes, query)
    seen = truth < 4
    assert (post.argmax(1)[seen] == truth[seen]).mean() > 0.95
    assert roc_auc_score(seen, p_known) > 0.9
    unknown = p_known < threshold
    assert unknown[~seen].mean() > 0.5 and unknown[seen].mean() < 0.2
    np.testing.assert_allclose(confidence, p_right * p_known)


def test_threshold_flags_the_chosen_share_of_held_out_cells(world):
    *_, model = world
    assert 0.0 < model.threshold < 1.0
    # the reference's own held-out share is stated in the report; the threshold is its quantile, so a
    # higher target rate would give a higher threshold
    assert model.report["held_out_cells"] > 0 and FALSE_REJECTION == 0.05


def test_label_model_round_trips_and_rejects_damaged_dicts(world):
    ref, codes, query, _, model = world
    again = LabelModel.from_dict(model.to_dict())
    a = decide(model, ref, codes, query)[1][2]
    b = decide(again, ref, codes, query)[1][2]
    np.testing.assert_allclose(a, b)
    bad = model.to_dict()
    bad["classes"] = ["a", "b"]  # fewer names than the prior has labels
    with pytest.raises(InputError):
        LabelModel.from_dict(bad)
    bad = model.to_dict()
    bad["threshold"] = 3.0
    with pytest.raises(InputError):
        LabelModel.from_dict(bad)


def merged_in_the_embedding(rng, n: int):
    """Three types; ``x`` and ``y`` nearly merged in the embedding but apart in expression."""
    codes = np.repeat([0, 1, 2], n)
    emb_centres = np.array([[1.0, 0, 0, 0], [1.0, 0.05, 0, 0], [0, 0, 1.0, 0]])
    expr_centres = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    emb = l2_normalize(emb_centres[codes] + rng.normal(0, 0.1, (3 * n, 4)))
    expr = l2_normalize(expr_centres[codes] + rng.normal(0, 0.2, (3 * n, 3)))
    return emb, expr, codes


def test_pooling_with_the_expression_space_labels_what_the_embedding_merges():
    """The embedding's vote guesses between two merged types; pooled with the expression space's vote, the
    labels are right, and the probability that a label is right matches how often it is."""
    rng = np.random.default_rng(0)
    emb, expr, codes = merged_in_the_embedding(rng, 200)
    with_expr = fit_label_model(emb, codes, ["x", "y", "z"], expression=expr, k=10, seed=0)
    without = fit_label_model(emb, codes, ["x", "y", "z"], k=10, seed=0)
    assert with_expr.uses_expression and not without.uses_expression
    assert with_expr.expression_posterior is not None and without.expression_posterior is None
    q_emb, q_expr, truth = merged_in_the_embedding(rng, 100)
    sims, idx = exact_search(q_emb, emb, 10)
    e_sims, e_idx = exact_search(q_expr, expr, 20)
    pooled = with_expr.label_posterior(sims, codes[idx], (e_sims, codes[e_idx]))
    alone = without.label_posterior(sims, codes[idx])
    np.testing.assert_allclose(pooled.sum(axis=1), 1.0)
    merged = truth < 2
    assert (alone.argmax(1) == truth)[merged].mean() < 0.8
    assert (pooled.argmax(1) == truth).mean() > 0.97
    p_right = with_expr.decide(query_features(sims, pooled, q_emb, emb, (q_expr, expr, codes[e_idx])), pooled)[0]
    assert abs(p_right.mean() - (pooled.argmax(1) == truth).mean()) < 0.05
    with pytest.raises(InputError, match="expression space"):
        with_expr.label_posterior(sims, codes[idx])
    again = LabelModel.from_dict(with_expr.to_dict())
    np.testing.assert_allclose(again.label_posterior(sims, codes[idx], (e_sims, codes[e_idx])), pooled)
    damaged = with_expr.to_dict()
    damaged["tau"] = -1.0
    with pytest.raises(InputError):
        LabelModel.from_dict(damaged)


def test_a_single_labeled_type_cannot_be_calibrated():
    emb = l2_normalize(np.random.default_rng(0).normal(size=(100, 4)))
    with pytest.raises(InputError):
        fit_label_model(emb, np.zeros(100, dtype=int), ["only"], k=5)


def test_agreement_and_density_ratio_by_hand():
    np.testing.assert_allclose(agreement(np.array([[0, 0, 1], [-1, -1, -1], [2, -1, 2]]), np.array([0, 1, 2])),
                               [2 / 3, 0.0, 1.0])
    # a cell far from the reference but among other query cells has a low ratio
    ref = l2_normalize(np.array([[1.0, 0, 0]] * 20) + np.random.default_rng(0).normal(0, 0.05, (20, 3)))
    near = l2_normalize(np.array([[1.0, 0.1, 0]] * 10) + np.random.default_rng(1).normal(0, 0.05, (10, 3)))
    far = l2_normalize(np.array([[0, 0, 1.0]] * 10) + np.random.default_rng(2).normal(0, 0.05, (10, 3)))
    ratio, to_ref = density_ratio(np.vstack([near, far]), ref)
    assert ratio[:10].min() > ratio[10:].max() and to_ref[:10].min() > to_ref[10:].max()


def test_fine_labels_stay_within_the_predicted_coarse_label():
    fine = np.array([0, 0, 1, 1, 2, 2, -1])
    coarse = np.array([0, 0, 0, 0, 1, 1, 1])
    parents = parent_labels(fine, coarse, 3, 2)
    np.testing.assert_array_equal(parents, [0, 0, 1])
    post = np.array([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    out = within_parent(post, parents, np.array([0, 0]))
    np.testing.assert_allclose(out[0], [0.4, 0.6, 0.0])
    np.testing.assert_allclose(out[1], [0.0, 0.0, 1.0])  # no allowed label has mass: the flat posterior


def test_a_decision_saved_before_pooling_loads_as_the_embeddings_vote(world):
    """A stored decision without the expression vote (written before the votes were pooled) decides as it was
    fitted: by the embedding's calibrated vote alone."""
    ref, codes, query, _, model = world
    stored = model.to_dict()
    del stored["expression_posterior"], stored["tau"]
    old = LabelModel.from_dict(stored)
    assert old.expression_posterior is None and not old.uses_expression
    sims, idx = exact_search(query, ref, model.posterior.k)
    np.testing.assert_allclose(old.label_posterior(sims, codes[idx]), model.posterior.posterior(sims, codes[idx]))


def test_logistic_score_equals_sklearns_fit_when_no_bound_binds():
    from sklearn.linear_model import LogisticRegression

    from scconcerto.mapping import LogisticScore

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 2)) * [1.0, 5.0] + [0.5, -2.0]
    y = (x @ [1.5, 0.4] + rng.logistic(size=400) > 0)
    w = rng.uniform(0.5, 2.0, 400)
    score = LogisticScore.fit({"a": x[:, 0], "b": x[:, 1]}, ("a", "b"), y, w)
    z = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z, y, sample_weight=w)
    expected = ref.predict_proba(z)[:, 1]
    np.testing.assert_allclose(score({"a": x[:, 0], "b": x[:, 1]}), expected, atol=1e-4)


def test_logistic_score_never_falls_as_a_feature_rises():
    """Two correlated features, the second a noisy copy of the first that the outcome leans *against* once the
    first is known: unconstrained, it would enter with a negative sign."""
    from sklearn.linear_model import LogisticRegression

    from scconcerto.mapping import LogisticScore

    rng = np.random.default_rng(4)
    a = rng.normal(size=2000)
    b = a + rng.normal(0, 0.3, 2000)
    y = (2.0 * a - 1.0 * b + rng.logistic(size=2000) > 0)
    free = LogisticRegression(C=1.0).fit(np.column_stack([a, b]), y)
    assert free.coef_[0, 1] < 0  # the case the bound is for
    score = LogisticScore.fit({"a": a, "b": b}, ("a", "b"), y)
    assert min(score.coef) >= 0.0 and score.coef[0] > 0.0
    grid = np.linspace(-3, 3, 50)
    for name in ("a", "b"):
        other = "b" if name == "a" else "a"
        p = score({name: grid, other: np.zeros_like(grid)})
        assert np.all(np.diff(p) >= 0)
    # the bound costs little here: about as good a ranking as the first feature alone
    assert roc_auc_score(y, score({"a": a, "b": b})) > roc_auc_score(y, a) - 0.01


def test_logistic_score_needs_both_outcomes():
    from scconcerto.mapping import LogisticScore

    with pytest.raises(InputError, match="both outcomes"):
        LogisticScore.fit({"a": np.arange(5.0)}, ("a",), np.ones(5, dtype=bool))


def test_a_decision_reading_the_embeddings_own_vote_needs_it(monkeypatch):
    """The package's decision does not read the embedding's own vote (mapping then skips computing it); one fitted
    to read it (the alternative ``benchmarks/confidence.py`` measures) says so, and its ``P(right)`` changes with
    that vote while the pooled posterior stays the same."""
    import scconcerto.mapping.label_model as label_model

    rng = np.random.default_rng(0)

    def noisy(n):  # expression blurred too, so that some held-out labels are wrong and P(right) is fitted
        e, x, c = merged_in_the_embedding(rng, n)
        return e, l2_normalize(x + rng.normal(0, 0.6, x.shape)), c

    emb, expr, codes = noisy(200)
    package = fit_label_model(emb, codes, ["x", "y", "z"], expression=expr, k=10, seed=0)
    assert package.right is not None and not package.reads_embedding_support
    monkeypatch.setattr(label_model, "RIGHT_FEATURES", label_model.RIGHT_FEATURES + (label_model.EMBEDDING_SUPPORT,))
    reading = fit_label_model(emb, codes, ["x", "y", "z"], expression=expr, k=10, seed=0)
    assert reading.reads_embedding_support and LabelModel.from_dict(reading.to_dict()).reads_embedding_support
    q_emb, q_expr, _ = noisy(100)
    sims, idx = exact_search(q_emb, emb, 10)
    e_sims, e_idx = exact_search(q_expr, expr, 20)
    pooled = reading.label_posterior(sims, codes[idx], (e_sims, codes[e_idx]))
    own = reading.posterior.posterior(sims, codes[idx])
    given = query_features(sims, pooled, q_emb, emb, (q_expr, expr, codes[e_idx]), embedding_posterior=own)
    as_pooled = query_features(sims, pooled, q_emb, emb, (q_expr, expr, codes[e_idx]))
    assert not np.allclose(reading.decide(given, pooled)[0], reading.decide(as_pooled, pooled)[0])


def test_a_small_reference_voted_perfectly_on_its_held_out_cells_is_sure_but_not_certain(monkeypatch):
    """Forty-two cells of three well-separated types: the ten held-out cells are all voted right. Calibrated with
    Platt's correction (1 / (n + 2) for n held-out cells) the vote is sure but leaves the other labels at least
    about 1 / (2 (n + 2)) between them; under the plain likelihood it would be certain."""
    import scconcerto.mapping.label_model as label_model

    rng = np.random.default_rng(3)
    centres = rng.normal(0, 1, (3, 16))
    ref, codes = clusters(14, centres, 0.05, seed=4)
    query, _ = clusters(5, centres, 0.05, seed=5)

    def top_probability(model):
        sims, idx = exact_search(query, ref, model.posterior.k)
        return model.posterior.posterior(sims, codes[idx]).max(axis=1)

    corrected = fit_label_model(ref, codes, ["a", "b", "c"], k=5, seed=0)
    n_held = len(codes) // 4  # the default hold-out: a quarter of the labeled cells
    assert np.all(top_probability(corrected) < 1 - 1 / (2 * (n_held + 2)))
    assert np.all(top_probability(corrected) > 0.8)
    monkeypatch.setattr(label_model, "platt_smoothing", lambda n: 0.0)
    plain = fit_label_model(ref, codes, ["a", "b", "c"], k=5, seed=0)
    assert np.all(top_probability(plain) > 0.999)


def test_the_seen_prior_multiplies_the_odds_of_p_seen():
    from scconcerto.mapping.label_model import at_seen_prior

    # odds 1 at a prior of 0.9 become 9; odds 1/4 at a prior of 0.8 (odds 4) become 1
    np.testing.assert_allclose(at_seen_prior(np.array([0.5, 0.2, 0.0, 1.0]), 0.9)[:1], [0.9])
    np.testing.assert_allclose(at_seen_prior(np.array([0.2]), 0.8), [0.5])
    np.testing.assert_array_equal(at_seen_prior(np.array([0.0, 1.0]), 0.9), [0.0, 1.0])
    p = np.linspace(0.01, 0.99, 50)
    np.testing.assert_allclose(at_seen_prior(p, 0.5), p)
    for prior in (0.0, 1.0, 1.5):
        with pytest.raises(InputError, match="strictly between 0 and 1"):
            at_seen_prior(p, prior)


def test_the_seen_prior_moves_the_probabilities_but_flags_the_same_cells(world):
    ref, codes, query, truth, model = world
    sims, idx = exact_search(query, ref, model.posterior.k)
    post = model.posterior.posterior(sims, codes[idx])
    features = query_features(sims, post, query, ref)
    p_right, even, _, t_even = model.decide(features, post, seen_prior=0.5)
    _, high, confidence, t_high = model.decide(features, post, seen_prior=0.95)
    assert (high >= even).all() and (high > even)[(even > 0.01) & (even < 0.99)].all()
    assert t_high > t_even
    np.testing.assert_array_equal(high < t_high, even < t_even)
    np.testing.assert_allclose(confidence, p_right * high)
    # the package's default lies between the two
    _, default, _, _ = model.decide(features, post)
    assert (default >= even).all() and (default <= high).all()
