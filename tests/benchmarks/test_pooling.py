"""The pooling benchmark's report: the way of deciding chosen on development rows only, the per-seed gain by hand."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("benchmarks.pooling")

from benchmarks.pooling import METHODS, report  # noqa: E402


def rows() -> pd.DataFrame:
    """Two development splits and one test split, two seeds. ``concatenated`` is best on development but worst
    on test (over all rows ``mapping`` is best), ``pca_knn`` best on test."""
    acc = {"mapping": 0.90, "embedding": 0.88, "expression": 0.80, "concatenated": 0.92, "pca_knn": 0.85}
    test_acc = {"mapping": 0.95, "embedding": 0.94, "expression": 0.90, "concatenated": 0.60, "pca_knn": 0.99}
    out = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        for split, role in (("d1", "development"), ("d2", "development"), ("t1", "test")):
            for method in METHODS:
                base = (acc if role == "development" else test_acc)[method]
                # seed 1 adds 0.02 to mapping on d1 only: the per-seed gain differs by 0.01 between seeds
                bonus = shift if (method == "mapping" and split == "d1") else 0.0
                out.append({"split": split, "role": role, "seed": seed, "method": method,
                            "acc": base + bonus, "macro_f1": base})
    return pd.DataFrame(out)


def test_the_choice_reads_development_rows_only_and_the_gain_is_per_seed():
    text = report(rows(), "python -m benchmarks.pooling --smoke", 1.0, [])
    assert "Chosen on development: **concatenated**" in text  # the test rows do not choose
    gains = text.split("## mapping minus embedding, mean accuracy over each role's splits, per seed")[1]
    gains = gains.split("##")[0]
    # development: seed 0 (0.90 - 0.88) = 0.02; seed 1 mean over d1 (0.04) and d2 (0.02) = 0.03
    assert "| development | 0.020 | 0.030 |" in gains
    assert "| test | 0.010 | 0.010 |" in gains
    assert "Command: `python -m benchmarks.pooling --smoke`" in text
