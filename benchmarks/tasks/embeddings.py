"""Whole-data-set embeddings of every method with one (fitted on all batches, labels available to the
supervised ones), shared by the integration, clustering and over-correction tasks. A fit may yield
extra embeddings (scANVI's scVI pre-training model, listed as ``scvi``)."""

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
    return all_embeddings(ctx, dataset, adata, is_counts, [method]).get(method)


def all_embeddings(ctx: Context, dataset: str, adata: ad.AnnData, is_counts: bool,
                   methods: list[str] | None = None) -> dict[str, np.ndarray]:
    """Every method's embedding of ``adata`` (``ctx.methods`` by default), extras right after the method
    that produced them; cached per run, so integration and clustering fit each method once."""
    out: dict[str, np.ndarray] = {}
    for method in methods if methods is not None else ctx.methods:
        key = ("embedding", dataset, method)
        if key not in ctx.cache:
            ctx.cache[key] = None
            ctx.cache[("extras", dataset, method)] = {}
            try:
                m = make(method, epochs=ctx.epochs, seed=ctx.seed)
                if m.has_embedding:
                    t0 = time.perf_counter()
                    m.fit(adata, "cell_type", "batch", is_counts)
                    ctx.cache[key] = np.asarray(m.embed_reference(), dtype=np.float32)
                    ctx.cache[("extras", dataset, method)] = m.extra_embeddings()
                    ctx.cache[("epochs", dataset, method)] = m.epochs_text()
                    log.info("[embedding] %s / %s: %.1f s (epochs %s)", dataset, method, time.perf_counter() - t0,
                             m.epochs_text())
            except Exception as err:  # one failing method must not stop the others
                log.error("[embedding] %s / %s failed: %s", dataset, method, err)
        if ctx.cache[key] is not None:
            out[method] = ctx.cache[key]
            out.update(ctx.cache[("extras", dataset, method)])
    return out


def epochs_of(ctx: Context, dataset: str, method: str) -> str | None:
    """The epochs ``method`` (or the method an extra came from) used on ``dataset``'s embedding."""
    if ("epochs", dataset, method) in ctx.cache:
        return ctx.cache[("epochs", dataset, method)]
    for key, extras in list(ctx.cache.items()):
        if len(key) == 3 and key[0] == "extras" and key[1] == dataset and method in (extras or {}):
            return ctx.cache.get(("epochs", dataset, key[2]))
    return None
