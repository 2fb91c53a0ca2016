"""scANVI with scArches query mapping (scvi-tools): scVI pre-training, scANVI on the labels, then the
query's own batch covariates trained with the reference weights frozen. Confidence: the winning class
probability. The reference embedding is the scANVI latent space."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np

from .base import Mapping, Method, counts

UNLABELED = "Unknown"


def _epochs(n_cells: int, cap: int) -> int:
    """scvi-tools' own heuristic (about 20k cell passes ... 400 epochs), capped."""
    return int(min(cap, max(20, round(400 * min(1.0, 20_000 / max(n_cells, 1))))))


class ScanviMethod(Method):
    """scANVI + scArches (``SCANVI.prepare_query_anndata`` / ``load_query_data``)."""

    name = "scanvi"

    def __init__(self, n_latent: int = 30, max_epochs: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_latent, self.max_epochs = n_latent, max_epochs

    def _quiet(self) -> None:
        import scvi

        scvi.settings.seed = self.seed
        scvi.settings.verbosity = logging.ERROR
        scvi.settings.dl_num_workers = 0

    def fit(self, reference: ad.AnnData, label_key: str, batch_key: str | None, is_counts: bool) -> None:
        import scvi

        self._quiet()
        self.is_counts, self.label_key, self.batch_key = is_counts, label_key, batch_key
        ref = counts(reference, is_counts)
        ref.obs[label_key] = reference.obs[label_key].astype(str).to_numpy()
        scvi.model.SCVI.setup_anndata(ref, batch_key=batch_key, labels_key=label_key)
        epochs = self.epochs or _epochs(ref.n_obs, self.max_epochs)
        vae = scvi.model.SCVI(ref, n_latent=self.n_latent, n_layers=2, encode_covariates=True,
                              deeply_inject_covariates=False, use_layer_norm="both", use_batch_norm="none")
        vae.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
        self.model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNLABELED)
        self.model.train(max_epochs=max(5, epochs // 10), n_samples_per_label=100, accelerator="cpu",
                         enable_progress_bar=False)
        self.ref = ref
        self.query_epochs = epochs

    def map(self, query: ad.AnnData, batch_key: str | None) -> Mapping:
        import scvi

        self._quiet()
        q = counts(query, self.is_counts)
        q.obs[self.label_key] = UNLABELED
        q.obs[self.batch_key] = (query.obs[batch_key].astype(str).to_numpy() if batch_key in query.obs
                                 else "query")
        scvi.model.SCANVI.prepare_query_anndata(q, self.model)
        qm = scvi.model.SCANVI.load_query_data(q, self.model)
        qm.train(max_epochs=self.query_epochs, plan_kwargs={"weight_decay": 0.0}, accelerator="cpu",
                 enable_progress_bar=False)
        proba = qm.predict(soft=True)
        labels = proba.columns.to_numpy(dtype=str)[proba.to_numpy().argmax(axis=1)]
        return Mapping(labels, proba.to_numpy().max(axis=1), qm.get_latent_representation().astype(np.float32))

    def embed_reference(self) -> np.ndarray:
        return self.model.get_latent_representation(self.ref).astype(np.float32)
