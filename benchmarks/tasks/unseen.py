"""Task 5: a cell type absent from the reference but present in the query. AUROC of each method's
confidence for seen (positive) vs unseen query cells, and accuracy on the seen cells."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from scconcerto.metrics import accuracy

from .base import Context, TaskResult, for_each_method, seen_mask
from .data import drop_type, label_transfer_splits

#: (split name, cell type removed from its reference)
CASES = [("symphony_pbmc_3tech:query=5p", "B"), ("scclassify_pancreas_wang_xin:query=xin", "beta"),
         ("simulated:query=batch_0", "type_0")]


def run(ctx: Context) -> TaskResult:
    """One split per case; every method's confidence is scored for telling unseen cells apart."""
    result = TaskResult("unseen_type")
    wanted = dict(CASES)
    for split in label_transfer_splits(ctx.data_dir, result.skipped, ctx.smoke):
        if split.name not in wanted:
            continue
        removed = wanted[split.name]
        types = set(split.reference.obs[split.label_key].astype(str))
        if removed not in types:
            result.skipped.append(f"{split.name}: no {removed!r} cells (types: {sorted(types)})")
            continue
        case = drop_type(split, removed)
        seen = seen_mask(case)
        truth = case.query.obs[case.label_key].astype(str).to_numpy()

        def score(name, fitted):
            conf = np.asarray(fitted.mapping.confidence, dtype=float)
            return {"removed": removed, "auroc": float(roc_auc_score(seen, conf)),
                    "seen_acc": accuracy(truth[seen], fitted.mapping.labels[seen]),
                    "n_unseen": int((~seen).sum()), "conf_seen_median": float(np.median(conf[seen])),
                    "conf_unseen_median": float(np.median(conf[~seen]))}

        result.rows.extend(for_each_method(ctx, case, score))
    return result
