"""Unsupervised embedding quality: scConcerto trained without labels against 50-PC PCA and Harmony.

On every labelled multi-batch data set, on three single-technology development sets split into donors
of very different compositions (:mod:`.donors`), and on three development sets whose myeloid cells are all
in one source (:mod:`.exclusive`, as the pancreas test set's exocrine cells are all in one), each method
embeds all cells without seeing a label:

* ``scconcerto``: ``Concerto(adata, batch_key="batch").train()`` at the package defaults (one source per
  batch, normalized apart or together as the sources' shift decides), the reference embedding;
* ``pca``: 50 principal components of log-normalized values at scanpy's defaults
  (``normalize_total``, ``log1p``, ``pca``; log-normalized input is used as it is);
* ``harmony``: Harmony (harmonypy) on those components, by batch.

Scores, mean and standard deviation over seeds (the seed of the training, of the PCA solver and of
Harmony): leave-one-batch-out 5-NN accuracy (:func:`scconcerto.metrics.cross_batch_accuracy`, cosine),
and the scib-metrics ``Benchmarker``'s raw bio-conservation and batch-correction scores (its
unintegrated baseline is the PCA). Each data set's role (development or test, :func:`.data.role`)
is in the table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd

from scconcerto.metrics import cross_batch_accuracy

from .base import Context, TaskResult
from .data import LOGNORM, role, simulated
from .donors import DONORS
from .exclusive import EXCLUSIVE, load_variant

log = logging.getLogger("benchmarks")

#: Labelled data sets with several batches: development first, then test.
DATASETS = ("symphony_pbmc_3tech", "kang_ifnb_pbmc_scgen", "cellbench_5cl_celseq2_3plates",
            "scclassify_pancreas_wang_xin", "pbmcsca_dropseq_indrops", "scmerge_mesc", *DONORS, *EXCLUSIVE)
METHODS = ("scconcerto", "pca", "harmony")
#: Table column of each score's mean ± sd.
SHOWN = {"acc": "LOO-batch 5-NN acc", "bio": "scib bio conservation", "batch": "scib batch correction"}
#: Seeds per data set: ``ctx.seed`` and the next ones.
N_SEEDS = 3
K = 5
N_PCS = 50


def datasets(ctx: Context, skipped: list[str], names: tuple[str, ...] = DATASETS
             ) -> list[tuple[str, ad.AnnData, bool]]:
    """``(name, adata, is_counts)`` of the data sets present (the simulated stand-in in a smoke run)."""
    if ctx.smoke:
        return [("simulated", simulated(), True)]
    out = []
    for name in names:
        adata = load_variant(ctx.data_dir, name, skipped)
        if adata is not None:
            out.append((name, adata, name not in LOGNORM))
    return out


def pca_embedding(adata: ad.AnnData, is_counts: bool, seed: int = 0, n_comps: int = N_PCS) -> np.ndarray:
    """50 PCs of log-normalized values, scanpy's defaults (counts are normalized and logged first)."""
    import scanpy as sc

    tmp = ad.AnnData(adata.X.astype(np.float32), obs=adata.obs[[]].copy())
    if is_counts:
        sc.pp.normalize_total(tmp)
        sc.pp.log1p(tmp)
    sc.pp.pca(tmp, n_comps=int(min(n_comps, min(tmp.shape) - 1)), random_state=seed)
    return np.asarray(tmp.obsm["X_pca"], dtype=np.float32)


def harmony_embedding(pcs: np.ndarray, batches: np.ndarray, seed: int = 0) -> np.ndarray:
    """Harmony (harmonypy) on the principal components, by batch."""
    import harmonypy

    meta = pd.DataFrame({"batch": pd.Categorical(np.asarray(batches).astype(str))})
    out = harmonypy.run_harmony(np.asarray(pcs, dtype=np.float64), meta, "batch", random_state=seed, verbose=False)
    z = np.asarray(out.Z_corr)
    return np.ascontiguousarray(z.T if z.shape[0] != len(pcs) else z, dtype=np.float32)


def concerto_embedding(adata: ad.AnnData, seed: int = 0, epochs: int | None = None,
                       batch_key: str | None = "batch", model_options: dict | None = None,
                       **train_options) -> np.ndarray:
    """scConcerto trained without labels (one source per batch by default; the package's defaults where
    ``model_options``, passed to ``Concerto``, and ``train_options`` say nothing); the reference embedding."""
    from scconcerto import Concerto

    model = Concerto(adata, batch_key=batch_key, seed=seed, **(model_options or {}))
    model.train(epochs=epochs, progress=False, prepare_mapping=False, **train_options)
    return np.asarray(model.reference.embedding, dtype=np.float32)


def method_embeddings(name: str, adata: ad.AnnData, is_counts: bool, seeds: list[int], epochs: int | None,
                      methods: tuple[str, ...] = METHODS) -> tuple[dict[tuple[str, int], np.ndarray], dict]:
    """Every method's embedding at every seed, keyed ``(method, seed)``, and the seconds each took."""
    batches = adata.obs["batch"].astype(str).to_numpy()
    out: dict[tuple[str, int], np.ndarray] = {}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    for seed in seeds:
        t0 = time.perf_counter()
        pcs = pca_embedding(adata, is_counts, seed)
        t_pca = time.perf_counter() - t0
        if "pca" in methods:
            out[("pca", seed)] = pcs
            seconds["pca"].append(t_pca)
        if "harmony" in methods:
            t0 = time.perf_counter()
            out[("harmony", seed)] = harmony_embedding(pcs, batches, seed)
            seconds["harmony"].append(t_pca + time.perf_counter() - t0)
        if "scconcerto" in methods:
            t0 = time.perf_counter()
            out[("scconcerto", seed)] = concerto_embedding(adata, seed, epochs)
            seconds["scconcerto"].append(time.perf_counter() - t0)
        log.info("[unsupervised] %s seed %d done", name, seed)
    return out, seconds


def scib_scores(adata: ad.AnnData, is_counts: bool, embeddings: dict[tuple[str, int], np.ndarray]
                ) -> tuple[dict[tuple[str, int], dict[str, float]] | None, str]:
    """The scib-metrics ``Benchmarker``'s raw bio-conservation and batch-correction scores of every embedding
    (one run per data set), or ``None`` and why not."""
    from .scib_bench import benchmarker_rows

    named = {f"{method}_s{seed}": emb for (method, seed), emb in embeddings.items()}
    rows, message = benchmarker_rows("unsupervised", adata, is_counts, named)
    if rows is None:
        return None, message
    by_name = {r["method"]: r for r in rows}
    out = {}
    for (method, seed) in embeddings:
        r = by_name.get(f"{method}_s{seed}")
        if r is not None:
            out[(method, seed)] = {"bio": r.get("Bio conservation", np.nan), "batch": r.get("Batch correction",
                                                                                             np.nan)}
    return out, message


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and standard deviation (ddof 1; 0 for one value) of the finite values."""
    v = np.asarray([x for x in values if x == x], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def shown(mean: float, sd: float) -> str:
    """``mean ± sd`` with three decimals (empty when not measured)."""
    return "" if mean != mean else f"{mean:.3f} ± {sd:.3f}"


def summary_rows(name: str, adata: ad.AnnData, scores: dict[tuple[str, int], dict[str, float]],
                 seconds: dict[str, list[float]], methods: tuple[str, ...]) -> list[dict]:
    """One row per method: the role of the data set, each score's mean and spread over seeds."""
    rows = []
    for method in methods:
        mine = [s for (m, _), s in scores.items() if m == method]
        if not mine:
            continue
        row = {"dataset": name, "role": role(name), "method": method, "n_cells": adata.n_obs,
               "n_batches": int(adata.obs["batch"].nunique()), "seeds": len(mine)}
        for metric in ("acc", "bio", "batch"):
            mean, sd = mean_sd([s.get(metric, np.nan) for s in mine])
            row[metric], row[f"{metric}_sd"] = mean, sd
            row[SHOWN[metric]] = shown(mean, sd)
        row["seconds"] = float(np.mean(seconds.get(method) or [np.nan]))
        rows.append(row)
    return rows


def verdicts(rows: list[dict]) -> list[str]:
    """Per data set: does scConcerto beat PCA on accuracy and bio-conservation, and Harmony on batch removal?"""
    notes = []
    df = pd.DataFrame(rows)
    if df.empty:
        return notes
    for name, part in df.groupby("dataset", sort=False):
        by = part.set_index("method")
        if "scconcerto" not in by.index:
            continue
        ours = by.loc["scconcerto"]
        parts = []
        for metric, peer in (("acc", "pca"), ("bio", "pca"), ("batch", "harmony")):
            if peer in by.index and by.loc[peer, metric] == by.loc[peer, metric] and ours[metric] == ours[metric]:
                d = ours[metric] - by.loc[peer, metric]
                verdict = "beats" if d > 0 else "ties" if d == 0 else "trails"
                parts.append(f"{metric} vs {peer} {d:+.3f} ({verdict})")
        notes.append(f"{name} ({role(name)}): " + "; ".join(parts))
    return notes


def run(ctx: Context, names: tuple[str, ...] = DATASETS, methods: tuple[str, ...] = METHODS,
        n_seeds: int = N_SEEDS, progress: Callable[[str], None] | None = None) -> TaskResult:
    """The unsupervised table: every data set x method, mean and spread over ``n_seeds`` seeds."""
    result = TaskResult("unsupervised")
    seeds = [ctx.seed + i for i in range(n_seeds)]
    for name, adata, is_counts in datasets(ctx, result.skipped, names):
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        batches = adata.obs["batch"].astype(str).to_numpy()
        embeddings, seconds = method_embeddings(name, adata, is_counts, seeds, ctx.epochs, methods)
        scores = {key: {"acc": cross_batch_accuracy(emb, labels, batches, k=K)} for key, emb in embeddings.items()}
        if ctx.scib_metrics:
            t0 = time.perf_counter()
            scib, message = scib_scores(adata, is_counts, embeddings)
            if scib is None:
                result.skipped.append(f"{name}: {message}")
            else:
                for key, s in scib.items():
                    scores[key].update(s)
                result.notes.append(f"{name}: {message}, {time.perf_counter() - t0:.0f} s")
        result.rows.extend(summary_rows(name, adata, scores, seconds, methods))
        if progress is not None:
            progress(name)
    result.notes = verdicts(result.rows) + result.notes
    result.notes.append(f"seeds {seeds}; accuracy: leave-one-batch-out {K}-NN (cosine, similarity-weighted vote; "
                        "cells whose label no other batch holds are left out); bio / batch: scib-metrics "
                        "Benchmarker raw scores (baseline for PCR comparison: the PCA)")
    return result
