"""The benchmark summary averages every method over the same splits."""

import numpy as np
import pandas as pd

from benchmarks.report import headline_means, table
from benchmarks.tasks.base import TaskResult


def _rows():
    # split b: method "y" labels every cell right, so it has no AUROC there
    return [{"split": "a", "method": "x", "acc": 0.9, "auroc_right_wrong": 0.6},
            {"split": "a", "method": "y", "acc": 0.8, "auroc_right_wrong": 0.9},
            {"split": "b", "method": "x", "acc": 0.7, "auroc_right_wrong": 0.2},
            {"split": "b", "method": "y", "acc": 1.0, "auroc_right_wrong": np.nan}]


def test_a_split_missing_one_methods_score_leaves_every_methods_mean():
    mean, counts = headline_means(pd.DataFrame(_rows()), ["acc", "auroc_right_wrong"])
    assert counts == {"acc": 2, "auroc_right_wrong": 1}
    assert mean.loc["x", "auroc_right_wrong"] == 0.6  # not (0.6 + 0.2) / 2: y has no score on b
    assert mean.loc["y", "auroc_right_wrong"] == 0.9
    assert np.isclose(mean.loc["x", "acc"], 0.8) and np.isclose(mean.loc["y", "acc"], 0.9)
    assert list(mean.index) == ["x", "y"]


def test_the_task_table_says_over_how_many_splits_each_mean_is():
    text = table(TaskResult("label_transfer", _rows(), [], [], [], [], 0))
    assert "Mean over 2 splits/data sets where every method has the score (auroc_right_wrong: 1 splits" in text
    full = table(TaskResult("label_transfer", [r for r in _rows() if r["split"] == "a"], [], [], [], [], 0))
    assert "Mean over 1 splits/data sets:" in full
