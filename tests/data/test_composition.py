import numpy as np
import pandas as pd

from scconcerto.data.composition import balance_groups, source_balance_weights


def test_source_weights_by_hand():
    # source 0 holds group 0 three times and group 1 once: to reach 1:1 the ratios are 0.5/0.75 and 0.5/0.25,
    # mean (3 * 2/3 + 2) / 4 = 1; source 1 holds group 1 only (nothing to balance); source 2 has one
    # labelled cell and three unlabelled ones, a group of their own
    groups = np.array([0, 0, 0, 1, 1, 1, 2, -1, -1, -1])
    domains = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    w = source_balance_weights(groups, domains)
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0, 1.0, 1.0, 2.0, 2 / 3, 2 / 3, 2 / 3], rtol=1e-6)
    assert w.dtype == np.float32


def test_weighted_sources_have_equal_group_shares():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 4, 1000)
    domains = rng.integers(0, 3, 1000)
    groups[domains == 1] = rng.choice(4, (domains == 1).sum(), p=[0.7, 0.1, 0.1, 0.1])
    w = source_balance_weights(groups, domains)
    for d in range(3):
        mine = domains == d
        shares = np.bincount(groups[mine], weights=w[mine], minlength=4) / w[mine].sum()
        np.testing.assert_allclose(shares, 0.25, atol=1e-6)
        assert abs(w[mine].mean() - 1.0) < 1e-5


def _skewed_components(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three types (directions in 10-d), two sources offset from each other; source 0 is 80 % type 0,
    source 1 is 80 % type 2."""
    rng = np.random.default_rng(seed)
    domains = np.repeat([0, 1], 500)
    types = np.concatenate([rng.choice(3, 500, p=[0.8, 0.1, 0.1]), rng.choice(3, 500, p=[0.1, 0.1, 0.8])])
    centres = np.eye(10)[:3] * 3.0
    offset = np.zeros(10)
    offset[5] = 1.5
    z = centres[types] + rng.normal(scale=0.3, size=(1000, 10)) + offset * domains[:, None] + 1.0
    return z, types, domains


def test_groups_follow_types_across_sources_of_different_composition():
    z, types, domains = _skewed_components()
    groups = balance_groups(z, domains, n_clusters=6, seed=0)
    table = pd.crosstab(groups, types)
    assert table.max(axis=1).sum() / len(types) > 0.95  # clusters hold one type
    # and the clusters are shared by the sources: most cells sit in a cluster holding both sources
    shared = pd.crosstab(groups, domains).min(axis=1) > 0
    assert shared[groups].mean() > 0.8
    # seeded
    np.testing.assert_array_equal(groups, balance_groups(z, domains, n_clusters=6, seed=0))
