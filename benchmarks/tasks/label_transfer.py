"""Task 1: label transfer across chemistries, technologies, protocols, conditions and plates
(ACC, macro-F1, median per-class F1 on the query cells whose type the reference has, and the AUROC of each
method's confidence for its right against its wrong labels there), and a confusion-matrix figure per split."""

from __future__ import annotations

import numpy as np

from .base import Context, TaskResult, annotation_scores, for_each_method, seen_mask
from .data import label_transfer_splits


def run(ctx: Context) -> TaskResult:
    """Fit every method on every split's reference and score its query predictions."""
    result = TaskResult("label_transfer")
    for split in label_transfer_splits(ctx.data_dir, result.skipped, ctx.smoke):
        seen = seen_mask(split)
        truth = split.query.obs[split.label_key].astype(str).to_numpy()
        predictions: dict[str, np.ndarray] = {}

        def score(name, fitted):
            predictions[name] = fitted.mapping.labels
            return annotation_scores(truth, fitted.mapping, seen)

        result.rows.extend(for_each_method(ctx, split, score))
        result.notes.extend(f"{split.name}: {n}" for n in split.notes)
        if ctx.figures and predictions:
            from ..plots import confusion_matrices

            result.figures.append(confusion_matrices(ctx.out_dir, split.name, truth[seen],
                                                     {k: v[seen] for k, v in predictions.items()}))
    return result
