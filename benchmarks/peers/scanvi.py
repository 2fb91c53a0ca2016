"""scANVI with scArches query mapping (scvi-tools): scVI pre-training, scANVI on the labels, then the
query's own batch covariates trained with the reference weights frozen (``SCANVI.prepare_query_anndata``
/ ``load_query_data``). Confidence: the winning class probability of ``predict(soft=True)``.
The reference embedding is the scANVI latent space; the scVI latent of the pre-training model is
offered too (``extra_embeddings``: the unsupervised scVI embedding of the integration tasks).

CPU budget: epochs follow a fixed number of cell passes (scvi-tools' own heuristic is 400 epochs
for small data, far too long on 2 shared cores), clipped to ``[MIN_EPOCHS, max_epochs]``; the epochs
actually used are kept in ``epochs_used`` and reported. As in scvi-tools' tutorials, the model runs
on the reference's ``N_HVG`` highly variable genes (``seurat_v3`` on counts, batch-aware) chosen
among the genes shared with the query, which every method receives.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np

from .base import Mapping, Method, counts

UNLABELED = "Unknown"
#: Cell passes of scVI pre-training and of the scArches query training.
REFERENCE_CELL_PASSES = 40_000
QUERY_CELL_PASSES = 20_000
MIN_EPOCHS = 10
N_HVG = 2_000


def epochs_for(n_cells: int, cell_passes: int, cap: int, floor: int = MIN_EPOCHS) -> int:
    """Epochs that make about ``cell_passes`` cell visits over ``n_cells`` cells, within ``[floor, cap]``."""
    return int(min(cap, max(floor, round(cell_passes / max(n_cells, 1)))))


def select_hvg(adata: ad.AnnData, batch_key: str | None, n_top: int = N_HVG) -> list[str]:
    """The reference's ``n_top`` highly variable genes (``seurat_v3`` on counts; all genes when fewer)."""
    import scanpy as sc

    if adata.n_vars <= n_top:
        return list(adata.var_names)
    tmp = ad.AnnData(X=adata.X, obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    use_batch = batch_key is not None and batch_key in adata.obs and adata.obs[batch_key].nunique() > 1
    if use_batch:
        tmp.obs["b"] = adata.obs[batch_key].astype(str).to_numpy()
    try:
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top, flavor="seurat_v3", batch_key="b" if use_batch else None)
    except Exception:  # seurat_v3's loess can fail on tiny batches: fall back to the batch-free ranking
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top, flavor="seurat_v3")
    return list(tmp.var_names[tmp.var["highly_variable"].to_numpy()])


class ScanviMethod(Method):
    """scANVI + scArches (``SCANVI.prepare_query_anndata`` / ``load_query_data``)."""

    name = "scanvi"

    def __init__(self, n_latent: int = 30, max_epochs: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_latent, self.max_epochs = n_latent, max_epochs
        self.epochs_used: dict[str, int] = {}

    def _quiet(self) -> None:
        import scvi

        scvi.settings.seed = self.seed
        scvi.settings.verbosity = logging.ERROR
        scvi.settings.dl_num_workers = 0
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
            logging.getLogger(name).setLevel(logging.ERROR)

    def fit(self, reference: ad.AnnData, label_key: str, batch_key: str | None, is_counts: bool) -> None:
        import scvi

        self._quiet()
        self.is_counts, self.label_key, self.batch_key = is_counts, label_key, batch_key or "batch"
        ref = counts(reference, is_counts)
        self.genes = select_hvg(ref, batch_key)
        ref = ref[:, self.genes].copy()
        ref.obs[label_key] = reference.obs[label_key].astype(str).to_numpy()
        ref.obs[self.batch_key] = (reference.obs[batch_key].astype(str).to_numpy()
                                   if batch_key in reference.obs else "reference")
        scvi.model.SCVI.setup_anndata(ref, batch_key=self.batch_key, labels_key=label_key)
        epochs = self.epochs or epochs_for(ref.n_obs, REFERENCE_CELL_PASSES, self.max_epochs)
        vae = scvi.model.SCVI(ref, n_latent=self.n_latent, n_layers=2, encode_covariates=True,
                              deeply_inject_covariates=False, use_layer_norm="both", use_batch_norm="none")
        vae.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
        self.vae = vae
        scanvi_epochs = max(5, min(10, epochs // 3))  # scvi-tools: 10 after scVI pre-training
        self.model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNLABELED)
        self.model.train(max_epochs=scanvi_epochs, n_samples_per_label=100, accelerator="cpu",
                         enable_progress_bar=False)
        self.ref = ref
        self.epochs_used = {"scvi": epochs, "scanvi": scanvi_epochs}

    def map(self, query: ad.AnnData, batch_key: str | None) -> Mapping:
        import scvi

        self._quiet()
        q = counts(query, self.is_counts)
        q = q[:, [g for g in self.genes if g in q.var_names]].copy()
        q.obs[self.label_key] = UNLABELED
        q.obs[self.batch_key] = (query.obs[batch_key].astype(str).to_numpy() if batch_key in query.obs
                                 else "query")
        scvi.model.SCANVI.prepare_query_anndata(q, self.model)
        qm = scvi.model.SCANVI.load_query_data(q, self.model)
        epochs = self.epochs or epochs_for(q.n_obs, QUERY_CELL_PASSES, self.max_epochs)
        qm.train(max_epochs=epochs, plan_kwargs={"weight_decay": 0.0}, accelerator="cpu",
                 enable_progress_bar=False)
        self.epochs_used["query"] = epochs
        proba = qm.predict(soft=True)
        labels = proba.columns.to_numpy(dtype=str)[proba.to_numpy().argmax(axis=1)]
        return Mapping(labels, np.clip(proba.to_numpy().max(axis=1), 0, 1),
                       qm.get_latent_representation().astype(np.float32))

    def embed_reference(self) -> np.ndarray:
        return self.model.get_latent_representation(self.ref).astype(np.float32)

    def extra_embeddings(self) -> dict[str, np.ndarray]:
        """The unsupervised scVI latent of the reference cells (the pre-training model)."""
        return {"scvi": self.vae.get_latent_representation(self.ref).astype(np.float32)}
