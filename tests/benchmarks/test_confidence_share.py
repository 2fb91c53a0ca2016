"""The confidence benchmark's measures: the calibration error, and the query-share variant it measured."""

import numpy as np
import pytest

from benchmarks.confidence import calibration_error, to_query_share


def test_calibration_error_by_hand():
    """Two bins: (0.2, 0.2) with outcomes (0, 1): |0.5 - 0.2|; (0.9) with outcome 1: |1 - 0.9|; weighted 2/3, 1/3."""
    p = np.array([0.2, 0.2, 0.9])
    y = np.array([0, 1, 1])
    assert calibration_error(p, y) == pytest.approx(2 / 3 * 0.3 + 1 / 3 * 0.1)
    assert calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == pytest.approx(0.0)


@pytest.mark.parametrize("share", [1.0, 0.8, 0.3])
def test_query_share_recovers_a_known_share_and_calibrates(share):
    """Balanced odds from a known likelihood ratio (a seen cell's score ~ N(1, 1), an unseen one's ~ N(-1, 1): odds
    ``exp(2x)`` at 1:1): EM finds the true share, the moved probabilities are calibrated where the balanced ones
    are not, and neither the order of the cells nor which fall below the threshold changes."""
    rng = np.random.default_rng(0)
    n = 6000
    seen = rng.random(n) < share
    x = np.where(seen, rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n))
    balanced = 1.0 / (1.0 + np.exp(-2.0 * x))
    moved, threshold, estimated = to_query_share(balanced, 0.3)
    assert abs(estimated - seen.mean()) < 0.03
    assert calibration_error(moved, seen) < 0.03 < 0.06 < calibration_error(balanced, seen)
    assert np.array_equal(np.argsort(moved, kind="stable"), np.argsort(balanced, kind="stable"))
    np.testing.assert_array_equal(moved < threshold, balanced < 0.3)


def test_the_prior_chosen_is_the_best_calibrated_one_whose_aurocs_hold():
    """Development rows of three priors: 0.9 is best calibrated but loses 0.05 of seen-vs-unseen AUROC, so 0.7
    (calibrated better than even odds, AUROCs within the tolerance) is chosen; test rows are never read."""
    import pandas as pd

    from benchmarks.confidence import choose_prior

    rows = []
    for seed in (0, 1):
        for prior, ece, unseen_auroc in ((0.5, 0.20, 0.85), (0.7, 0.10, 0.845), (0.9, 0.05, 0.80)):
            rows.append({"group": "label transfer", "role": "development", "seed": seed, "decision": f"prior {prior:g}",
                         "ece_confidence": ece, "right_vs_wrong": 0.8, "seen_vs_unseen": np.nan})
            rows.append({"group": "unseen type", "role": "development", "seed": seed, "decision": f"prior {prior:g}",
                         "ece_confidence": ece, "right_vs_wrong": 0.8, "seen_vs_unseen": unseen_auroc})
            rows.append({"group": "unseen type", "role": "test", "seed": seed, "decision": f"prior {prior:g}",
                         "ece_confidence": 0.0 if prior == 0.9 else 1.0, "right_vs_wrong": 0.9, "seen_vs_unseen": 0.9})
    chosen, table = choose_prior(pd.DataFrame(rows))
    assert chosen == 0.7
    assert list(table["AUROCs within tolerance"]) == [True, True, False]
