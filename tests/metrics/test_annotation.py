"""Annotation metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scconcerto._errors import InputError
from scconcerto.metrics import accuracy, annotation_report, f1_per_class, macro_f1, median_f1

# Per class (hand-computed):
#   a: TP 2, FP 0, FN 0            -> F1 1
#   b: TP 1, FP 0, FN 1 (P 1, R .5) -> F1 2/3
#   c: TP 0 (one b predicted as c)  -> F1 0
#   d: TP 2                          -> F1 1
#   x: only predicted               -> F1 0 (not a true class)
Y_TRUE = ["a", "a", "b", "b", "c", "c", "d", "d"]
Y_PRED = ["a", "a", "b", "c", "x", "x", "d", "d"]


def test_accuracy_by_hand():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(5 / 8)
    assert accuracy([1, 2, 3], [1, 2, 3]) == 1.0
    assert accuracy([1, 2, 3], [3, 1, 2]) == 0.0


def test_f1_per_class_by_hand():
    f1 = f1_per_class(Y_TRUE, Y_PRED)
    assert isinstance(f1, pd.Series)
    assert list(f1.index) == ["a", "b", "c", "d", "x"]
    np.testing.assert_allclose(f1.to_numpy(), [1.0, 2 / 3, 0.0, 1.0, 0.0])


def test_f1_per_class_precision_and_recall_both_matter():
    # class 0: TP 1, FP 2, FN 1 -> P 1/3, R 1/2 -> F1 = 2*(1/6)/(5/6) = 0.4
    f1 = f1_per_class([0, 0, 1, 1, 1], [0, 1, 0, 0, 1])
    assert f1[0] == pytest.approx(0.4)
    # class 1: TP 1, FP 1, FN 2 -> P 1/2, R 1/3 -> F1 0.4
    assert f1[1] == pytest.approx(0.4)


def test_macro_and_median_over_true_classes_only():
    # true classes a, b, c, d: F1 1, 2/3, 0, 1
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    # sorted 0, 2/3, 1, 1 -> median of the middle two
    assert median_f1(Y_TRUE, Y_PRED) == pytest.approx((2 / 3 + 1) / 2)


def test_median_f1_odd_number_of_classes():
    # a: F1 1; b: TP1 FN1 FP0 -> 2/3; c: TP1 FP1 FN0 -> 2/3 ... make them distinct:
    # a: 1; b: P 1 R 1/3 -> 0.5; c: TP 1 FP 2 FN 0 -> P 1/3 R 1 -> 0.5 ... median 0.5
    y_true = ["a", "b", "b", "b", "c"]
    y_pred = ["a", "b", "c", "c", "c"]
    f1 = f1_per_class(y_true, y_pred)
    np.testing.assert_allclose(f1.to_numpy(), [1.0, 0.5, 0.5])
    assert median_f1(y_true, y_pred) == pytest.approx(0.5)
    assert macro_f1(y_true, y_pred) == pytest.approx(2 / 3)


def test_annotation_report():
    report = annotation_report(Y_TRUE, Y_PRED)
    assert set(report) == {"accuracy", "macro_f1", "median_f1"}
    assert report["accuracy"] == pytest.approx(5 / 8)
    assert report["macro_f1"] == pytest.approx(2 / 3)
    assert report["median_f1"] == pytest.approx(5 / 6)
    assert all(isinstance(v, float) for v in report.values())


def test_mixed_label_types_are_compared_as_strings():
    assert accuracy(np.array([1, 2, 3]), np.array(["1", "2", "4"])) == pytest.approx(2 / 3)


def test_mismatched_lengths_raise():
    with pytest.raises(InputError):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(InputError):
        median_f1([], [])
