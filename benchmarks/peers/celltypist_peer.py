"""CellTypist: logistic regression on log1p CP10K (SGD mini-batches for large references)."""

from __future__ import annotations

import anndata as ad
import numpy as np

from .base import Mapping, Method, lognorm, unlog


def _cp10k(adata: ad.AnnData, is_counts: bool) -> ad.AnnData:
    """log1p CP10K, which CellTypist checks for: log-normalized input at another depth or base is brought
    back to values (:func:`~benchmarks.peers.base.unlog`) and renormalized to 10,000 per cell."""
    if is_counts:
        return lognorm(adata, True)
    out = lognorm(adata, False)
    out.X.data = unlog(out.X.data).astype(np.float32)
    return lognorm(out, True)


def _patch_sklearn_compat() -> None:
    """CellTypist 1.7.1 passes ``multi_class='ovr'`` to ``LogisticRegression``, which scikit-learn 1.8+
    removed; drop it (the fit becomes multinomial; CellTypist still scores each class by its sigmoid)."""
    import importlib

    from sklearn.linear_model import LogisticRegression

    ct_train = importlib.import_module("celltypist.train")  # the module (the package re-exports a function)
    if getattr(ct_train, "_bench_patched", False):
        return

    def logistic_regression(*args, multi_class=None, **kwargs):
        return LogisticRegression(*args, **kwargs)

    ct_train.LogisticRegression = logistic_regression
    ct_train._bench_patched = True


#: References at least this large are trained with mini-batch SGD (CellTypist's large-data mode).
SGD_FROM = 50_000


class CellTypistMethod(Method):
    """CellTypist classifier; confidence = the winning class probability. No embedding."""

    name = "celltypist"
    has_embedding = False

    def fit(self, reference: ad.AnnData, label_key: str, batch_key: str | None, is_counts: bool) -> None:
        import celltypist

        _patch_sklearn_compat()
        self.is_counts = is_counts
        ref = _cp10k(reference, is_counts)
        large = ref.n_obs >= SGD_FROM
        self.model = celltypist.train(ref, labels=reference.obs[label_key].astype(str).to_numpy(),
                                      check_expression=False, n_jobs=1, max_iter=200, use_SGD=large,
                                      mini_batch=large, balance_cell_type=large, feature_selection=False)

    def map(self, query: ad.AnnData, batch_key: str | None) -> Mapping:
        import celltypist

        q = _cp10k(query, self.is_counts)
        result = celltypist.annotate(q, model=self.model, majority_voting=False, mode="best match")
        labels = result.predicted_labels["predicted_labels"].astype(str).to_numpy()
        confidence = result.probability_matrix.max(axis=1).to_numpy(dtype=float)
        return Mapping(labels, confidence, None)
