"""scConcerto: contrastive teacher-student embedding, AdaBN for query sources, k-NN label transfer.

Uses ``Concerto.map_query`` (calibrated confidence) when it works, else ``embed`` + cosine k-NN vote.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np

from .base import Mapping, Method, knn_transfer

log = logging.getLogger("benchmarks")


class ConcertoMethod(Method):
    """scConcerto with the package defaults (all shared genes, 128-d teacher output)."""

    name = "scconcerto"

    def fit(self, reference: ad.AnnData, label_key: str, batch_key: str | None, is_counts: bool) -> None:
        from scconcerto import Concerto

        self.label_key = label_key
        self.model = Concerto(reference, batch_key=batch_key, label_key=label_key, seed=self.seed)
        self.model.train(epochs=self.epochs, progress=False)
        self.epochs_used = int(self.model.train_config.epochs)
        self.ref_labels = reference.obs[label_key].astype(str).to_numpy()
        self.used = "map_query"

    def map(self, query: ad.AnnData, batch_key: str | None) -> Mapping:
        q = query.copy()
        key = batch_key if batch_key in q.obs else None
        if hasattr(self.model, "map_query"):
            try:
                result = self.model.map_query(q, k=self.k, batch_key=key, impute=False, place=False,
                                              min_overlap=0.0)
                pred = result.predictions[self.label_key]
                return Mapping(pred["pred"].astype(str).to_numpy(), pred["confidence"].to_numpy(dtype=float),
                               np.asarray(result.embedding, dtype=np.float32))
            except Exception as err:  # the mapping API is young: fall back to the primitives
                log.warning("map_query failed (%s); using embed + kNN vote", err)
        self.used = "embed+knn"
        emb = self.model.embed(q, batch_key=key, min_overlap=0.0)
        return knn_transfer(emb, self.model.reference.embedding, self.ref_labels, self.k)

    def embed_reference(self) -> np.ndarray:
        return np.asarray(self.model.reference.embedding)
