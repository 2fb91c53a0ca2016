"""Cell-type annotation metrics: accuracy and per-class / macro / median F1.

The Concerto paper reports the *median* of the per-class F1 scores over the
cell types present in the ground truth; it is robust to a few rare classes
that are hard to predict, while the macro F1 (their mean) is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from .._errors import InputError

__all__ = ["accuracy", "f1_per_class", "macro_f1", "median_f1", "annotation_report"]


def _as_label_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return ``y_true`` and ``y_pred`` as 1-d arrays of one common label type.

    If either side holds strings (or objects) both are cast to ``str`` so that
    e.g. integer ground truth can be compared with string predictions.
    """
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise InputError(
            f"y_true and y_pred must be 1-d label vectors, got shapes {t.shape} and {p.shape}."
        )
    if len(t) != len(p):
        raise InputError(
            f"y_true and y_pred have different lengths ({len(t)} and {len(p)}): "
            "they must hold one label per cell, in the same order."
        )
    if len(t) == 0:
        raise InputError("y_true and y_pred are empty: there is nothing to score.")
    if not (t.dtype.kind in "iubf" and p.dtype.kind in "iubf"):
        t = t.astype(str)
        p = p.astype(str)
    return t, p


def accuracy(y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray) -> float:
    """Fraction of cells whose predicted label equals the true label.

    Parameters
    ----------
    y_true
        True label of each cell, shape ``(n_cells,)``.
    y_pred
        Predicted label of each cell, shape ``(n_cells,)``.

    Returns
    -------
    float
        Accuracy in ``[0, 1]``.
    """
    t, p = _as_label_pair(y_true, y_pred)
    return float(accuracy_score(t, p))


def f1_per_class(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    labels: Sequence[Any] | np.ndarray | None = None,
) -> pd.Series:
    """F1 score of each class (one-vs-rest), with 0 where it is undefined.

    Parameters
    ----------
    y_true
        True label of each cell, shape ``(n_cells,)``.
    y_pred
        Predicted label of each cell, shape ``(n_cells,)``.
    labels
        Classes to score, in this order. By default the sorted union of the
        classes in ``y_true`` and ``y_pred`` (a class that is only predicted
        scores 0: it has no true positive).

    Returns
    -------
    pandas.Series
        F1 per class, indexed by class, named ``"f1"``.
    """
    t, p = _as_label_pair(y_true, y_pred)
    if labels is None:
        classes = np.union1d(t, p)
    else:
        classes = np.asarray(labels)
        if t.dtype.kind == "U" and classes.dtype.kind != "U":
            classes = classes.astype(str)
        if classes.ndim != 1 or len(classes) == 0:
            raise InputError("labels must be a non-empty 1-d list of classes to score.")
    scores = f1_score(t, p, labels=classes, average=None, zero_division=0)
    return pd.Series(np.asarray(scores, dtype=np.float64), index=pd.Index(classes, name="class"),
                     name="f1")


def macro_f1(y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray) -> float:
    """Mean of the per-class F1 over the classes present in ``y_true``.

    Unlike :func:`sklearn.metrics.f1_score` with ``average="macro"`` (which
    also averages over classes that are only predicted), classes absent from
    the ground truth are not averaged; wrong predictions of them still lower
    the recall, hence the F1, of the true classes.

    Parameters
    ----------
    y_true
        True label of each cell, shape ``(n_cells,)``.
    y_pred
        Predicted label of each cell, shape ``(n_cells,)``.

    Returns
    -------
    float
        Macro F1 in ``[0, 1]``.
    """
    t, p = _as_label_pair(y_true, y_pred)
    return float(f1_per_class(t, p, labels=np.unique(t)).mean())


def median_f1(y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray) -> float:
    """Median of the per-class F1 over the classes present in ``y_true``.

    This is the headline annotation metric of the Concerto paper.

    Parameters
    ----------
    y_true
        True label of each cell, shape ``(n_cells,)``.
    y_pred
        Predicted label of each cell, shape ``(n_cells,)``.

    Returns
    -------
    float
        Median F1 in ``[0, 1]`` (with an even number of classes, the mean of
        the two middle values).
    """
    t, p = _as_label_pair(y_true, y_pred)
    return float(np.median(f1_per_class(t, p, labels=np.unique(t)).to_numpy()))


def annotation_report(
    y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray
) -> dict[str, float]:
    """Accuracy, macro F1 and median F1 in one dictionary.

    Parameters
    ----------
    y_true
        True label of each cell, shape ``(n_cells,)``.
    y_pred
        Predicted label of each cell, shape ``(n_cells,)``.

    Returns
    -------
    dict
        ``{"accuracy": ..., "macro_f1": ..., "median_f1": ...}``.
    """
    t, p = _as_label_pair(y_true, y_pred)
    per_class = f1_per_class(t, p, labels=np.unique(t)).to_numpy()
    return {
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": float(per_class.mean()),
        "median_f1": float(np.median(per_class)),
    }
