"""Task 3: Leiden on each method's embedding across a resolution sweep; best and median ARI/NMI."""

from __future__ import annotations

from scconcerto.metrics import best_leiden

from .base import Context, TaskResult
from .data import integration_datasets
from .embeddings import all_embeddings

RESOLUTIONS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0)


def run(ctx: Context) -> TaskResult:
    """Leiden sweep on the whole-data-set embeddings (shared with the integration task)."""
    result = TaskResult("clustering")
    for name, adata, is_counts in integration_datasets(ctx.data_dir, result.skipped, ctx.smoke):
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        for method, emb in all_embeddings(ctx, name, adata, is_counts).items():
            sweep = best_leiden(emb, labels, resolutions=RESOLUTIONS, seed=ctx.seed)
            result.rows.append({"dataset": name, "method": method, "best_ari": sweep["best_ari"],
                                "best_ari_resolution": sweep["best_ari_resolution"],
                                "median_ari": sweep["median_ari"], "best_nmi": sweep["best_nmi"],
                                "median_nmi": sweep["median_nmi"]})
    return result
