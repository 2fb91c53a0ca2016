"""Task 4 (paper Fig. 3f): one cell type is removed from every source but one; an integration that
over-corrects merges the remaining cells of that type into other types. Reported: the mean silhouette
width (raw, Euclidean, cell-type labels) of the kept type's cells, and their 5-NN label purity."""

from __future__ import annotations

from sklearn.metrics import silhouette_samples

from scconcerto.tools import knn

from .base import Context, TaskResult
from .data import load, simulated
from .embeddings import all_embeddings

#: (data set, cell type, the one source that keeps it)
CASES = [("scclassify_pancreas_wang_xin", "beta", "wang"), ("symphony_pbmc_3tech", "B", "3pv2")]


def run(ctx: Context) -> TaskResult:
    """Remove the type from all sources but one, embed with every method, score the type's separation."""
    result = TaskResult("overcorrection")
    cases = [("simulated", "type_0", "batch_0")] if ctx.smoke else CASES
    for dataset, cell_type, keeper in cases:
        adata = simulated() if ctx.smoke else load(ctx.data_dir, dataset, result.skipped)
        if adata is None:
            continue
        is_type = (adata.obs["cell_type"] == cell_type).to_numpy()
        adata = adata[~is_type | (adata.obs["batch"] == keeper).to_numpy()].copy()
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        target = labels == cell_type
        name = f"{dataset}:{cell_type}_only_in_{keeper}"
        for method, emb in all_embeddings(ctx, name, adata, dataset != "scclassify_pancreas_wang_xin").items():
            sil = silhouette_samples(emb, labels)
            nn = knn(emb[target], emb, k=5, exclude_self=True)
            purity = float((labels[nn.indices] == cell_type).mean())
            result.rows.append({"case": name, "method": method, "n_type_cells": int(target.sum()),
                                "type_asw": float(sil[target].mean()), "type_knn_purity": purity})
    return result
