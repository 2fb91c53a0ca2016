"""The scib-metrics ``Benchmarker`` (optional: ``pip install scib-metrics`` with CPU JAX) on every method's
embedding of one data set, as a second opinion next to our own formulas in ``scconcerto.metrics``.

When scib-metrics is not installed (or fails), :func:`benchmarker_rows` returns ``None`` and a reason,
and the integration task keeps only its own table.
"""

from __future__ import annotations

import importlib.util
import logging

import anndata as ad
import numpy as np

from ..peers import lognorm

log = logging.getLogger("benchmarks")

#: Unintegrated PCA key handed to the Benchmarker (its PCR-comparison baseline).
PRE_KEY = "X_pca_unintegrated"


def available() -> bool:
    """Whether ``scib_metrics`` (and so JAX) is importable here."""
    return importlib.util.find_spec("scib_metrics") is not None


def _unintegrated_pca(adata: ad.AnnData, is_counts: bool, n_comps: int = 50) -> np.ndarray:
    """PCA of log1p CP10K (sparse, never densified)."""
    from sklearn.decomposition import TruncatedSVD

    x = lognorm(adata, is_counts).X
    return TruncatedSVD(min(n_comps, min(x.shape) - 1), random_state=0).fit_transform(x).astype(np.float32)


def benchmarker_rows(dataset: str, adata: ad.AnnData, is_counts: bool, embeddings: dict[str, np.ndarray]
                     ) -> tuple[list[dict] | None, str]:
    """Run ``scib_metrics.benchmark.Benchmarker`` on ``embeddings`` (method -> (n_cells, d)).

    Returns
    -------
    rows, message
        One row per method with the Benchmarker's raw (not min-max scaled) scores and its
        ``Bio conservation`` / ``Batch correction`` / ``Total`` aggregates, or ``None`` and why not.
    """
    if not available():
        return None, "scib-metrics not installed (pip install scib-metrics==0.5.10): our own formulas only"
    if not embeddings:
        return None, "no embeddings"
    try:
        from scib_metrics.benchmark import Benchmarker

        obs = adata.obs[["cell_type", "batch"]].astype(str).astype("category")
        bench = ad.AnnData(obs=obs.copy())
        bench.obsm[PRE_KEY] = _unintegrated_pca(adata, is_counts)
        keys = {}
        for method, emb in embeddings.items():
            keys[method] = f"X_{method}"
            bench.obsm[keys[method]] = np.asarray(emb, dtype=np.float32)
        bm = Benchmarker(bench, batch_key="batch", label_key="cell_type", embedding_obsm_keys=list(keys.values()),
                         pre_integrated_embedding_obsm_key=PRE_KEY, n_jobs=1, progress_bar=False)
        bm.benchmark()
        table = bm.get_results(min_max_scale=False)
    except Exception as err:  # a second opinion must not stop the run
        log.error("[integration] scib-metrics Benchmarker failed on %s: %s", dataset, err)
        return None, f"scib-metrics Benchmarker failed on {dataset}: {type(err).__name__}: {err}"
    rows = []
    for method, key in keys.items():
        if key not in table.index:
            continue
        values = table.loc[key]
        row = {"dataset": dataset, "method": method}
        for col, v in values.items():
            try:
                row[str(col)] = float(v)
            except (TypeError, ValueError):
                continue
        rows.append(row)
    return rows, "scib-metrics Benchmarker (raw scores, not min-max scaled)"
