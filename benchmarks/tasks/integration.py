"""Task 2: integration metrics (scib-metrics conventions, computed with ``scconcerto.metrics``) on each
method's embedding of whole multi-batch data sets, plus UMAPs coloured by label and by batch."""

from __future__ import annotations

import time

import numpy as np

from scconcerto import metrics

from .base import Context, TaskResult
from .data import integration_datasets
from .embeddings import all_embeddings, epochs_of
from .scib_bench import benchmarker_rows

BIO = ("nmi", "ari", "silhouette_label", "clisi", "isolated_labels")
BATCH = ("silhouette_batch", "ilisi", "kbet", "graph_connectivity")


def scores(emb: np.ndarray, labels: np.ndarray, batches: np.ndarray, seed: int = 0) -> dict[str, float]:
    """scib-style bio-conservation and batch-correction scores (all in [0, 1], higher is better);
    ``bio``/``batch`` are their means and ``total`` = 0.6 bio + 0.4 batch (scib's weighting)."""
    k = max(5, min(90, len(emb) // 4))
    clusters = metrics.best_leiden(emb, labels, seed=seed)
    out = {"nmi": clusters["best_nmi"], "ari": clusters["best_ari"],
           "silhouette_label": metrics.silhouette_label(emb, labels, seed=seed),
           "clisi": metrics.clisi(emb, labels, k=k),
           "isolated_labels": metrics.isolated_label_score(emb, labels, batches, seed=seed),
           "silhouette_batch": metrics.silhouette_batch(emb, labels, batches, seed=seed),
           "ilisi": metrics.ilisi(emb, batches, k=k),
           "kbet": metrics.kbet_acceptance(emb, batches, k=min(50, len(emb) // 4)),
           "graph_connectivity": metrics.graph_connectivity(emb, labels)}
    out = {k_: float(v) for k_, v in out.items()}
    out["bio"] = float(np.mean([out[m] for m in BIO]))
    out["batch"] = float(np.mean([out[m] for m in BATCH]))
    out["total"] = 0.6 * out["bio"] + 0.4 * out["batch"]
    return out


def run(ctx: Context) -> list[TaskResult]:
    """Score every method with an embedding on every integration data set, with our formulas and (when
    installed) the scib-metrics ``Benchmarker``; two tables."""
    result = TaskResult("integration")
    scib = TaskResult("integration_scib_metrics")
    for name, adata, is_counts in integration_datasets(ctx.data_dir, result.skipped, ctx.smoke):
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        batches = adata.obs["batch"].astype(str).to_numpy()
        embeddings = all_embeddings(ctx, name, adata, is_counts)
        for method, emb in embeddings.items():
            row = {"dataset": name, "method": method, "n_cells": adata.n_obs, **scores(emb, labels, batches, ctx.seed)}
            if (epochs := epochs_of(ctx, name, method)) is not None:
                row["epochs"] = epochs
            result.rows.append(row)
        if ctx.scib_metrics and embeddings:
            t0 = time.perf_counter()
            rows, message = benchmarker_rows(name, adata, is_counts, embeddings)
            if rows is None:
                scib.skipped.append(message)
            else:
                scib.rows.extend(rows)
                scib.notes.append(f"{name}: {message}, {time.perf_counter() - t0:.0f} s")
        if ctx.figures and embeddings:
            from ..plots import umap_grid

            result.figures.append(umap_grid(ctx.out_dir, name, embeddings, labels, batches, ctx.seed))
    if not ctx.scib_metrics:
        scib.skipped.append("scib-metrics Benchmarker not requested (--scib-metrics)")
    return [result, scib]
