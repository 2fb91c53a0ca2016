"""scConcerto: contrastive teacher-student embedding, AdaBN for query sources, k-NN label transfer
(``Concerto.map_query``, with its calibrated confidence)."""

from __future__ import annotations

import anndata as ad
import numpy as np

from .base import Mapping, Method


class ConcertoMethod(Method):
    """scConcerto with the package defaults (all shared genes, 128-d teacher output)."""

    name = "scconcerto"

    def fit(self, reference: ad.AnnData, label_key: str, batch_key: str | None, is_counts: bool) -> None:
        from scconcerto import Concerto

        self.label_key = label_key
        self.model = Concerto(reference, batch_key=batch_key, label_key=label_key, seed=self.seed)
        self.model.train(epochs=self.epochs, progress=False)
        self.epochs_used = int(self.model.train_config.epochs)

    def map(self, query: ad.AnnData, batch_key: str | None) -> Mapping:
        q = query.copy()
        key = batch_key if batch_key in q.obs else None
        result = self.model.map_query(q, k=self.k, batch_key=key, impute=False, place=False, min_overlap=0.0)
        pred = result.predictions[self.label_key]
        return Mapping(pred["pred"].astype(str).to_numpy(), pred["confidence"].to_numpy(dtype=float),
                       np.asarray(result.embedding, dtype=np.float32))

    def embed_reference(self) -> np.ndarray:
        return np.asarray(self.model.reference.embedding)
