"""Baseline: PCA (truncated SVD of log1p CP10K, fitted on the reference only) + cosine k-NN vote."""

from __future__ import annotations

import anndata as ad
import numpy as np
from sklearn.decomposition import TruncatedSVD

from .base import Mapping, Method, knn_transfer, lognorm


class PcaKnnMethod(Method):
    """Unintegrated PCA embedding; labels by similarity-weighted k-NN vote."""

    name = "pca_knn"

    def __init__(self, n_comps: int = 50, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_comps = n_comps

    def fit(self, reference: ad.AnnData, label_key: str, batch_key: str | None, is_counts: bool) -> None:
        self.is_counts = is_counts
        x = lognorm(reference, is_counts).X
        n = min(self.n_comps, min(x.shape) - 1)
        self.svd = TruncatedSVD(n, random_state=self.seed).fit(x)
        self.ref_emb = self.svd.transform(x).astype(np.float32)
        self.ref_labels = reference.obs[label_key].astype(str).to_numpy()

    def map(self, query: ad.AnnData, batch_key: str | None) -> Mapping:
        q = self.svd.transform(lognorm(query, self.is_counts).X).astype(np.float32)
        return knn_transfer(q, self.ref_emb, self.ref_labels, self.k)

    def embed_reference(self) -> np.ndarray:
        return self.ref_emb
