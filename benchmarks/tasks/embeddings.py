"""Whole-data-set embeddings of every method with one (fitted on all batches, labels available to the
supervised ones), shared by the integration, clustering and over-correction tasks."""

from __future__ import annotations

import logging
import time

import anndata as ad
import numpy as np

from ..peers import make
from .base import Context

log = logging.getLogger("benchmarks")


def embedding(ctx: Context, dataset: str, adata: ad.AnnData, is_counts: bool, method: str) -> np.ndarray | None:
    """The embedding of all cells of ``adata`` by ``method`` (cached per run); ``None`` without one."""
    key = ("embedding", dataset, method)
    if key not in ctx.cache:
        ctx.cache[key] = None
        try:
            m = make(method, epochs=ctx.epochs, seed=ctx.seed)
            if m.has_embedding:
                t0 = time.perf_counter()
                m.fit(adata, "cell_type", "batch", is_counts)
                ctx.cache[key] = np.asarray(m.embed_reference(), dtype=np.float32)
                log.info("[embedding] %s / %s: %.1f s", dataset, method, time.perf_counter() - t0)
        except Exception as err:  # one failing method must not stop the others
            log.error("[embedding] %s / %s failed: %s", dataset, method, err)
    return ctx.cache[key]
