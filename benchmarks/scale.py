"""Atlas-scale benchmark: reference build and query mapping from backed .h5ad files (prints figures).

Each phase runs in its own child process, so that its peak resident memory
(``ru_maxrss``) is its own. Figures are printed as JSON lines and collected in
``--out``. Nothing here is a test: timings depend on the machine and its load.

Typical use (docs/scale.md; ``benchmarks/SCALE.md`` is written by the first command)::

    python benchmarks/scale.py run --world hard --sizes 100000 --queries 10000 --peers celltypist symphony \
        --device cpu --out benchmarks/results/scale_hard_100k.json --report benchmarks/SCALE.md
    python benchmarks/scale.py report benchmarks/results/scale_hard_100k.json --out benchmarks/SCALE.md
    python benchmarks/scale.py profile --cells 20000 --genes 2000

Sub-commands run by ``run`` (usable alone): ``simulate`` (the easy world) or ``simulate-hard``
(``scconcerto.datasets.write_hard_simulation``), ``build``, ``converge``, ``map`` (streamed embedding and
vote), ``map-query`` (``Concerto.map_query``, as ``scconcerto map``), ``peer``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
if str(HERE.parent.parent) not in sys.path:  # run as a script: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(HERE.parent.parent))

from benchmarks._clock import cpu_seconds, peak_rss_gb  # noqa: E402


def emit(record: dict) -> None:
    print("RESULT " + json.dumps(record), flush=True)


def uptime() -> str:
    """``uptime``'s line (the machine is shared: its load average says how far wall-clock times are to be trusted)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": len(os.sched_getaffinity(0)), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "load_average": os.getloadavg()}


# ---------------------------------------------------------------- simulate
def cmd_simulate(args: argparse.Namespace) -> None:
    """World with ``n_batches`` batches; the reference is cells of all but the last batch, queries of the last."""
    from scconcerto.data.backed import read_backed, write_rows_h5ad
    from scconcerto.datasets import simulate, simulate_to_h5ad

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    up0 = uptime()
    opts = dict(n_types=args.types, n_batches=args.batches, seed=args.seed, markers_per_type=args.markers,
                batch_effect=args.batch_effect, mean_depth=args.depth)
    frac = simulate(400, args.genes, **opts).obs["batch"].value_counts(normalize=True)
    held_out = f"batch_{args.batches - 1}"
    f_q = float(frac[held_out])
    n_query = max(args.queries)
    n_total = int(math.ceil(max(args.n_ref / (1 - f_q), n_query / f_q) * 1.03))
    t0 = time.perf_counter()
    world = simulate_to_h5ad(work / f"world_{n_total}.h5ad", n_total, args.genes, chunk_size=20_000, **opts)
    t_sim = time.perf_counter() - t0
    batches = read_backed(world).obs["batch"].astype(str).to_numpy()
    ref_rows = np.flatnonzero(batches != held_out)[: args.n_ref]
    query_rows = np.flatnonzero(batches == held_out)
    write_rows_h5ad(world, work / f"ref_{args.n_ref}.h5ad", ref_rows, overwrite=True)
    for q in args.queries:
        write_rows_h5ad(world, work / f"query_{q}.h5ad", query_rows[:q], overwrite=True)
    os.remove(world)
    emit({"phase": "simulate", "simulation": opts, "n_total": n_total, "n_ref": int(ref_rows.size), "genes": args.genes,
          "queries": [int(min(q, query_rows.size)) for q in args.queries], "simulate_seconds": round(t_sim, 1),
          "seconds": round(time.perf_counter() - t0, 1), "peak_rss_gb": round(peak_rss_gb(), 2),
          "uptime_start": up0, "uptime_end": uptime()})


def cmd_simulate_hard(args: argparse.Namespace) -> None:
    """The hard world (``write_hard_simulation``): a reference of batches 0..n-2, queries of the held-out last.

    The largest query is the world's query file; smaller ones are its first cells (cell types are drawn per
    cell, so the first cells are a random sample).
    """
    from scconcerto.data.backed import write_rows_h5ad
    from scconcerto.datasets import write_hard_simulation

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    up0 = uptime()
    t0 = time.perf_counter()
    overrides = {"n_genes": args.genes} if args.genes else {}
    world = work / f"world_{args.n_ref}_{max(args.queries)}"
    ref, query = write_hard_simulation(world, args.n_ref, max(args.queries), seed=args.seed, overwrite=True,
                                       chunk_size=20_000, **overrides)
    t_sim = time.perf_counter() - t0
    os.replace(ref, work / f"ref_{args.n_ref}.h5ad")
    for q in sorted(args.queries):
        if q == max(args.queries):
            os.replace(query, work / f"query_{q}.h5ad")
        else:
            write_rows_h5ad(query, work / f"query_{q}.h5ad", np.arange(q), overwrite=True)
    world.rmdir()
    emit({"phase": "simulate", "world": "hard", "simulation": {"seed": args.seed, **overrides},
          "n_ref": args.n_ref, "queries": sorted(args.queries), "simulate_seconds": round(t_sim, 1),
          "seconds": round(time.perf_counter() - t0, 1), "peak_rss_gb": round(peak_rss_gb(), 2),
          "uptime_start": up0, "uptime_end": uptime()})


# ---------------------------------------------------------------- build
def cmd_build(args: argparse.Namespace) -> None:
    """Reference build with default settings from a backed file: setup, training, reference embedding, index."""
    import faiss

    from scconcerto import Concerto
    from scconcerto.data.backed import read_backed
    from scconcerto.search.ann import ann_index

    up0 = uptime()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    adata = read_backed(args.ref)
    model = Concerto(adata, batch_key="batch", label_key="cell_type")
    t_setup = time.perf_counter() - t0
    kwargs = {"epochs": args.epochs} if args.epochs else {}
    model.train(progress=False, device=args.device, **kwargs)
    t_model = time.perf_counter() - t0
    train_seconds = sum(h["seconds"] for h in model.history)
    t1 = time.perf_counter()
    index = ann_index(model.reference.embedding, "ivf")
    t_index = time.perf_counter() - t1
    model.save(args.model, overwrite=True)
    faiss.write_index(index, str(Path(args.model).with_suffix(".ivf.faiss")))
    n = adata.n_obs
    emit({"phase": "build", "n_cells": n, "genes": len(model.setup.genes), "epochs": model.train_config.epochs,
          "seconds_per_epoch": [round(h["seconds"], 1) for h in model.history],
          "train_cells_per_s": round(n * len(model.history) / train_seconds),
          "setup_seconds": round(t_setup, 1), "train_seconds": round(train_seconds, 1),
          "reference_embed_seconds": round(t_model - t_setup - train_seconds, 1),
          "build_seconds": round(t_model, 1), "index_seconds": round(t_index, 1),
          "final_loss": round(model.history[-1]["loss"], 4), "peak_rss_gb": round(peak_rss_gb(), 2),
          "process_cpu_seconds": round(cpu_seconds() - cpu0, 1),
          "uptime_start": up0, "uptime_end": uptime(), "machine": machine()})


# ---------------------------------------------------------------- converge
def _rows_in_memory(adata, rows: np.ndarray):  # noqa: ANN001, ANN202
    """Some rows of a backed AnnData, read into memory."""
    import anndata as ad

    from scconcerto.data.backed import BackedCSR

    return ad.AnnData(X=BackedCSR(adata.X)[rows], obs=adata.obs.iloc[rows].copy(), var=adata.var.copy())


def cmd_converge(args: argparse.Namespace) -> None:
    """Held-out label accuracy after every epoch (kNN from a query sample onto a reference sample)."""
    import lightning as L

    from scconcerto import Concerto
    from scconcerto.data import prepare_cells
    from scconcerto.data.backed import read_backed
    from scconcerto.train import TrainConfig, embed_cells, fit
    from scconcerto.tools import knn, vote

    ref = read_backed(args.ref)
    query = read_backed(args.query)
    model = Concerto(ref, batch_key="batch", label_key="cell_type")
    cells = prepare_cells(ref, model.setup).cells
    rng = np.random.default_rng(0)
    ref_rows = np.sort(rng.choice(ref.n_obs, min(args.probe, ref.n_obs), replace=False))
    q_rows = np.sort(rng.choice(query.n_obs, min(args.probe, query.n_obs), replace=False))
    probe_ref = prepare_cells(_rows_in_memory(ref, ref_rows), model.setup).cells
    probe_q_prepared = prepare_cells(_rows_in_memory(query, q_rows), model.setup)
    cats = model.setup.labels["cell_type"]
    ref_codes = np.searchsorted(cats, ref.obs["cell_type"].astype(str).to_numpy()[ref_rows])
    truth = query.obs["cell_type"].astype(str).to_numpy()[q_rows]
    new = sorted(set(probe_q_prepared.cells.domains.tolist()) - set(range(len(model.setup.sources))))
    curve: list[dict] = []

    class Probe(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, plan: L.LightningModule) -> None:
            net = plan.network
            device = str(plan.device)
            e_ref = embed_cells(net, probe_ref, device=device)
            e_q = embed_cells(net, probe_q_prepared.cells, device=device, adapt_domains=new or None)
            net.to(plan.device).train()
            pred = vote(knn(e_q, e_ref, k=5), ref_codes, len(cats)).codes
            acc = float(np.mean(np.asarray(cats)[pred] == truth))
            curve.append({"epoch": int(trainer.current_epoch) + 1, "query_knn_accuracy": round(acc, 4)})
            print(curve[-1], flush=True)

    config = TrainConfig(epochs=args.epochs, batch_size=256, lr=1e-3, max_genes=512, gene_dropout=0.4, seed=0,
                         device=args.device, progress=False)
    t0 = time.perf_counter()
    history = fit(model.network, cells, config, callbacks=[Probe()])
    best = max(c["query_knn_accuracy"] for c in curve)
    plateau = next(c["epoch"] for c in curve if c["query_knn_accuracy"] >= best - 0.01)
    emit({"phase": "converge", "n_cells": ref.n_obs, "epochs": args.epochs, "curve": curve,
          "epochs_to_plateau": plateau, "loss": [round(h["loss"], 3) for h in history],
          "seconds": round(time.perf_counter() - t0, 1), "probe_cells": int(len(q_rows))})


# ---------------------------------------------------------------- map
def cmd_map(args: argparse.Namespace) -> None:
    """Query mapping from a backed file: streamed embedding (AdaBN) + IVF kNN + similarity-weighted vote."""
    import faiss

    from scconcerto import Concerto
    from scconcerto.data import prepare_cells
    from scconcerto.data.backed import read_backed
    from scconcerto.metrics import annotation_report
    from scconcerto.search.ann import neighbor_recall
    from scconcerto.tools.label_transfer import transfer_streaming
    from scconcerto.tools import knn
    from scconcerto.train import iter_embeddings

    model = Concerto.load(args.model)
    index = faiss.read_index(str(Path(args.model).with_suffix(".ivf.faiss")))
    index.nprobe = args.nprobe
    rss_loaded = peak_rss_gb()
    up0 = uptime()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    query = read_backed(args.query)
    prepared = prepare_cells(query, model.setup, what="the query")
    new = sorted(set(prepared.cells.domains.tolist()) - set(range(len(model.setup.sources))))
    timing = {"embed": 0.0}
    kept: list[np.ndarray] = []

    def timed_blocks():
        it = iter_embeddings(model.network, prepared.cells, batch_size=1024, device=args.device,
                             adapt_domains=new or None)
        while True:
            t = time.perf_counter()
            try:
                rows, emb = next(it)
            except StopIteration:
                return
            timing["embed"] += time.perf_counter() - t
            if sum(len(k) for k in kept) < args.recall_sample:
                kept.append(emb)
            yield rows, emb

    ref = model.reference
    n_classes = {k: len(v) for k, v in model.setup.labels.items()}
    result = transfer_streaming(timed_blocks(), index, ref.labels, n_classes, query.n_obs, k=5)
    total = time.perf_counter() - t0
    cpu_used = cpu_seconds() - cpu0
    rss_mapped = peak_rss_gb()  # before the recall check below (its exact search copies the reference)
    cats = np.asarray(model.setup.labels["cell_type"], dtype=object)
    report = annotation_report(query.obs["cell_type"].astype(str).to_numpy(),
                               cats[result.codes["cell_type"]].astype(str))
    sample = np.concatenate(kept)[: args.recall_sample]
    exact = knn(sample, ref.embedding, k=5)
    approx = knn(sample, index, k=5)
    emit({"phase": "map", "n_query": query.n_obs, "n_reference": int(ref.embedding.shape[0]),
          "seconds": round(total, 2), "embed_seconds": round(timing["embed"], 2),
          "knn_and_vote_seconds": round(total - timing["embed"], 2), "cells_per_s": round(query.n_obs / total),
          "process_cpu_seconds": round(cpu_used, 1), "load_average": os.getloadavg(),
          "accuracy": round(report["accuracy"], 4), "macro_f1": round(report["macro_f1"], 4),
          "ivf_recall_at_5": round(neighbor_recall(approx, exact), 4), "nprobe": args.nprobe,
          "nlist": int(index.nlist), "recall_sample": int(sample.shape[0]),
          "peak_rss_gb": round(peak_rss_gb(), 2), "peak_rss_mapping_gb": round(rss_mapped, 2),
          "rss_after_model_load_gb": round(rss_loaded, 2),
          "adapted_sources": len(new), "uptime_start": up0, "uptime_end": uptime()})


def cmd_map_query(args: argparse.Namespace) -> None:
    """``Concerto.map_query`` as ``scconcerto map`` runs it (model loaded from disk, query in memory, every
    default), with the recall@5 of the reference's stored approximate index against exact search."""
    import anndata as ad

    from scconcerto import Concerto
    from scconcerto.metrics import annotation_report
    from scconcerto.search.ann import neighbor_recall
    from scconcerto.search.neighbors import knn

    up0 = uptime()
    t0 = time.perf_counter()
    model = Concerto.load(args.model)
    t_load = time.perf_counter() - t0
    query = ad.read_h5ad(args.query)
    cpu0 = cpu_seconds()
    t1 = time.perf_counter()
    model.map_query(query, device=args.device)
    total = time.perf_counter() - t1
    cpu_used = cpu_seconds() - cpu0
    info = query.uns["scconcerto_mapping"]
    report = annotation_report(query.obs["cell_type"].astype(str).to_numpy(),
                               query.obs["cell_type_pred"].astype(str).to_numpy())
    record = {"phase": "map_query", "n_query": query.n_obs, "n_reference": info["n_reference"],
              "seconds": round(total, 2), "model_load_seconds": round(t_load, 2),
              "process_cpu_seconds": round(cpu_used, 1), "timings": info["timings"], "index": info["index"],
              "accuracy": round(report["accuracy"], 4), "macro_f1": round(report["macro_f1"], 4),
              "peak_rss_gb": round(peak_rss_gb(), 2), "uptime_start": up0, "uptime_end": uptime()}
    if info["index"] != "flat":
        sample = query.obsm["X_concerto"][: args.recall_sample]
        index = model.mapper._search().index("full", model.reference.embedding, info["index"], model.seed)
        record["index_recall_at_5"] = round(neighbor_recall(knn(sample, index, 5),
                                                            knn(sample, model.reference.embedding, 5)), 4)
        record["recall_sample"] = int(len(sample))
    emit(record)


def sync_cuda() -> None:
    """Wait for queued GPU work (timings of asynchronous CUDA calls); nothing without CUDA."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- memory (one GPU, or CPU)
def _build_and_map(ref, world, queries: dict, batch_size: int, train_opts: dict,  # noqa: ANN001
                   device: str) -> None:
    """One ``memory`` build (``Concerto.train`` + ``prepare_mapping``) and its query mappings."""
    import torch

    from scconcerto import Concerto
    from scconcerto.metrics import annotation_report

    sync_cuda()
    t0 = time.perf_counter()
    model = Concerto(ref, batch_key="batch", label_key="cell_type")
    model.train(progress=False, device=device, prepare_mapping=False, batch_size=batch_size, **train_opts)
    sync_cuda()
    t_train_call = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.prepare_mapping(umap=False, device=device)
    t_prepare = time.perf_counter() - t1
    build = time.perf_counter() - t0
    fit_s = sum(h["seconds"] for h in model.history)
    emit({"phase": "build", "n_cells": ref.n_obs, "epochs": model.train_config.epochs,
          "batch_size": batch_size, "precision": model.train_config.precision,
          "seconds_per_epoch": [round(h["seconds"], 1) for h in model.history],
          "train_cells_per_s": round(ref.n_obs * len(model.history) / fit_s),
          "fit_seconds": round(fit_s, 1), "positives_and_reference_embedding_seconds": round(t_train_call - fit_s, 1),
          "prepare_mapping_seconds": round(t_prepare, 1), "build_seconds": round(build, 1),
          "final_loss": round(model.history[-1]["loss"], 4), "peak_rss_gb": round(peak_rss_gb(), 2),
          "gpu_peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None})
    for q, rows in queries.items():
        query = world[rows].copy()
        truth = query.obs["cell_type"].astype(str).to_numpy()
        sync_cuda()
        t0 = time.perf_counter()
        result = model.map_query(query, impute=False, place=False, device=device)
        sync_cuda()
        total = time.perf_counter() - t0
        report = annotation_report(truth, query.obs["cell_type_pred"].astype(str).to_numpy())
        info = query.uns["scconcerto_mapping"]
        emit({"phase": "map", "n_query": query.n_obs, "batch_size": batch_size, "seconds": round(total, 2),
              "cells_per_s": round(query.n_obs / total), "timings": info.get("timings"),
              "index": info.get("index"), "accuracy": round(report["accuracy"], 4),
              "macro_f1": round(report["macro_f1"], 4), "peak_rss_gb": round(peak_rss_gb(), 2)})
        del query, result


def cmd_memory(args: argparse.Namespace) -> None:
    """Reference build and query mapping with the data in memory, as a user with a GPU runs them.

    The world is simulated with every core (``simulate(n_jobs=None)``); the
    reference is the first ``n_ref`` cells outside the held-out batch and each
    query the first cells of that batch (unseen: AdaBN with label shift). The
    build is ``Concerto.train`` with its defaults but the batch size (neighbour
    positives, training, reference embedding) and ``prepare_mapping`` without
    the reference UMAP (calibration; the IVF centroids on CPUs only); the
    mapping is ``map_query`` (no UMAP placement, no imputation).
    """
    from scconcerto.datasets import simulate

    up0 = uptime()
    t0 = time.perf_counter()
    opts = dict(n_types=args.types, n_batches=args.batches, seed=args.seed, markers_per_type=args.markers,
                batch_effect=args.batch_effect, mean_depth=args.depth)
    frac = simulate(400, args.genes, **opts).obs["batch"].value_counts(normalize=True)
    held_out = f"batch_{args.batches - 1}"
    f_q = float(frac[held_out])
    n_total = int(math.ceil(max(args.n_ref / (1 - f_q), max(args.queries) / f_q) * 1.03))
    world = simulate(n_total, args.genes, n_jobs=None, **opts)
    batches = world.obs["batch"].astype(str).to_numpy()
    ref = world[np.flatnonzero(batches != held_out)[: args.n_ref]].copy()
    query_rows = np.flatnonzero(batches == held_out)
    queries = {q: query_rows[:q] for q in args.queries}
    emit({"phase": "simulate", "n_total": n_total, "n_ref": ref.n_obs, "seconds": round(time.perf_counter() - t0, 1),
          "nnz_per_cell": round(ref.X.nnz / ref.n_obs, 1), "machine": machine()})

    train_opts = {"epochs": args.epochs} if args.epochs else {}
    if args.precision:
        train_opts["precision"] = args.precision
    for batch_size in args.batch_size:
        _build_and_map(ref, world, queries, batch_size, train_opts, args.device)
    emit({"phase": "memory-done", "uptime_start": up0, "uptime_end": uptime()})


# ---------------------------------------------------------------- search
def cmd_search(args: argparse.Namespace) -> None:
    """Exact k-NN on a device (``search.neighbors.exact_search``): block top-k against a plain top-k."""
    from scconcerto.tools import neighbors

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, args.dim)).astype(np.float32)  # clustered, as embeddings are
    base = centres[rng.integers(0, 50, args.n_ref)] + 0.3 * rng.normal(size=(args.n_ref, args.dim)).astype(np.float32)
    query = centres[rng.integers(0, 50, args.n_query)] + 0.3 * rng.normal(size=(args.n_query, args.dim)).astype(
        np.float32)
    base, query = neighbors.l2_normalize(base), neighbors.l2_normalize(query)
    out = {"phase": "search", "n_ref": args.n_ref, "n_query": args.n_query, "dim": args.dim, "k": args.k,
           "device": args.device}
    results = {}
    block = neighbors.TOPK_BLOCK
    for name, block_size, tf32_pairs in (("block_topk", block, 1 << 62), ("plain_topk", 1 << 40, 1 << 62),
                                          ("block_topk_tf32", block, 0)):
        neighbors.TOPK_BLOCK, neighbors.GPU_TF32_MIN_PAIRS = block_size, tf32_pairs
        neighbors.exact_search(query[:1000], base, args.k, device=args.device)  # warm-up
        sync_cuda()
        t = time.perf_counter()
        results[name] = neighbors.exact_search(query, base, args.k, device=args.device)
        out[f"{name}_seconds"] = round(time.perf_counter() - t, 2)
    out["same_neighbours"] = round(float(np.mean(results["block_topk"][1] == results["plain_topk"][1])), 6)
    out["tf32_same_neighbours"] = round(float(np.mean(results["block_topk_tf32"][1] == results["block_topk"][1])), 6)
    out["tf32_recall_at_k"] = round(float(np.mean([len(np.intersect1d(a, b)) / len(a) for a, b in zip(
        results["block_topk_tf32"][1][:20000], results["block_topk"][1][:20000])])), 6)
    emit(out)


# ---------------------------------------------------------------- peers
def cmd_peer(args: argparse.Namespace) -> None:
    """A peer method (benchmarks/peers adapters) on the same reference/query files, in memory as they need."""
    import anndata as ad

    from benchmarks.peers import make
    from benchmarks.peers.base import timed_fit_map
    from scconcerto.metrics import annotation_report

    up0 = uptime()
    t0 = time.perf_counter()
    ref = ad.read_h5ad(args.ref)
    query = ad.read_h5ad(args.query)
    t_read = time.perf_counter() - t0
    method = make(args.method, seed=0)
    timed = timed_fit_map(method, ref, query, "cell_type", "batch", True)
    mapped = timed.mapping
    report = annotation_report(query.obs["cell_type"].astype(str).to_numpy(), np.asarray(mapped.labels, dtype=str))
    emit({"phase": "peer", "method": args.method, "n_ref": ref.n_obs, "n_query": query.n_obs,
          "read_seconds": round(t_read, 1), "fit_seconds": round(timed.fit_s, 1),
          "map_seconds": round(timed.map_s, 1), "fit_process_cpu_seconds": round(timed.fit_cpu_s, 1),
          "map_process_cpu_seconds": round(timed.map_cpu_s, 1),
          "accuracy": round(report["accuracy"], 4), "macro_f1": round(report["macro_f1"], 4),
          "peak_rss_gb": round(peak_rss_gb(), 2), "load_average": os.getloadavg(),
          "uptime_start": up0, "uptime_end": uptime()})


# ---------------------------------------------------------------- profile
def cmd_profile(args: argparse.Namespace) -> None:
    """Where a training step's time goes (torch profiler), and train/embed cells/s per attention backend.

    ``batch_assembly_ms`` is the host-side assembly of a training batch (sampling
    genes, the ragged layout); the step figures exclude it (in training, DataLoader
    workers overlap it with the steps on a GPU, not on CPUs).
    """
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile

    from scconcerto.data import prepare_cells, setup_reference
    from scconcerto.datasets import simulate
    from scconcerto.nn import ConcertoNetwork, nt_xent
    from scconcerto.nn.attention import attention_backend
    from scconcerto.train.plan import CpuThreads
    from scconcerto.train.runner import resolve_device

    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"

    def autocast():  # noqa: ANN202
        if args.precision == "bf16":
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    adata = simulate(args.cells, args.genes, n_types=8, n_batches=3, seed=0)
    setup = setup_reference(adata, batch_key="batch")
    cells = prepare_cells(adata, setup).cells
    rows = np.flatnonzero(cells.domains == 0)[: args.batch_size]
    rng = np.random.default_rng(0)
    tb = time.perf_counter()
    for _ in range(10):
        cells.batch(rows, 512, rng, 0.4)
    batch_seconds = (time.perf_counter() - tb) / 10
    batch = cells.batch(rows, 512, np.random.default_rng(0), 0.4).to(dev)
    full = cells.batch(np.arange(min(2048, cells.n_cells))).to(dev)
    out = {"phase": "profile", "cells": args.cells, "genes": args.genes, "device": str(dev),
           "precision": args.precision, "batch_cells": int(len(rows)),
           "batch_assembly_ms": round(1e3 * batch_seconds, 2),
           "expressed_genes_per_cell": round(cells.X.nnz / cells.n_cells, 1),
           "teacher_genes_per_cell_training": round(batch.teacher["rna"].indices.numel() / len(rows), 1)}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for backend in args.backends:
        torch.manual_seed(0)
        net = ConcertoNetwork(setup.n_features, len(setup.sources), dropout=0.3).to(dev)
        opt = torch.optim.Adam(net.parameters(), 1e-3)

        def step() -> None:
            with autocast():
                zt, zs = net(batch)
                loss = nt_xent(zt.float(), zs.float())
            opt.zero_grad()
            loss.backward()
            opt.step()

        with attention_backend(backend), CpuThreads() if not cuda else contextlib.nullcontext():
            for _ in range(3):
                step()
            sync_cuda()
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                step()
                sync_cuda()
                times.append(time.perf_counter() - t)
            net.eval()
            with torch.no_grad(), autocast():
                net.embed(full)
                sync_cuda()
                etimes = []
                for _ in range(max(2, args.repeats // 4)):
                    t = time.perf_counter()
                    net.embed(full)
                    sync_cuda()
                    etimes.append(time.perf_counter() - t)
            net.train()
            with profile(activities=activities) as prof:
                for _ in range(5):
                    step()
                sync_cuda()
        out[backend] = {"train_step_ms_median": round(1e3 * float(np.median(times)), 2),
                        "train_step_ms_min": round(1e3 * float(np.min(times)), 2),
                        "train_cells_per_s_median": round(len(rows) / float(np.median(times))),
                        "train_cells_per_s_with_batch_assembly": round(
                            len(rows) / (float(np.median(times)) + batch_seconds)),
                        "embed_cells_per_s_median": round(full.n_cells / float(np.median(etimes)))}
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(f"--- {backend}: 5 training steps of {len(rows)} cells, ops by {key}")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    out["machine"] = machine()
    emit(out)


# ---------------------------------------------------------------- run
def child(argv: list[str], log: Path) -> list[dict]:
    """Run a sub-command in a fresh process; return its RESULT records."""
    cmd = [sys.executable, str(HERE), *argv]
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as fh:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True)
    records = []
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            records.append(json.loads(line[7:]))
            print(line[7:], flush=True)
        else:
            print("  " + line, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"sub-command failed ({proc.returncode}); see {log}")
    return records


def world_options(args: argparse.Namespace) -> dict:
    """The simulated world ``run`` asks for (files made for another world are simulated again)."""
    if args.world == "hard":
        return {"world": "hard", "seed": args.seed, "genes": args.genes}
    return {"world": "easy", "genes": args.genes or 2000, "types": args.types, "batches": args.batches,
            "markers": args.markers, "batch_effect": args.batch_effect, "depth": args.depth}


def simulate_argv(args: argparse.Namespace, n: int, work: Path) -> list[str]:
    """The ``simulate`` / ``simulate-hard`` sub-command writing ``ref_{n}.h5ad`` and ``query_{q}.h5ad`` in ``work``."""
    queries = ["--queries", *(str(q) for q in args.queries), "--workdir", str(work)]
    if args.world == "hard":
        genes = ["--genes", str(args.genes)] if args.genes else []
        return ["simulate-hard", "--n-ref", str(n), "--seed", str(args.seed), *genes, *queries]
    return ["simulate", "--n-ref", str(n), "--genes", str(args.genes or 2000), "--types", str(args.types),
            "--batches", str(args.batches), "--markers", str(args.markers), "--batch-effect", str(args.batch_effect),
            "--depth", str(args.depth), *queries]


def run_header(args: argparse.Namespace, argv: list[str]) -> dict:
    """The first record of a run: when, which commit, the exact command, the machine and the world."""
    from benchmarks.report import commit_id

    return {"phase": "run", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit_id(), "command": "python benchmarks/scale.py " + shlex.join(argv),
            "machine": machine(), "uptime_start": uptime(), "world": world_options(args),
            "sizes": args.sizes, "queries": args.queries, "peers": args.peers, "device": args.device,
            "epochs": args.epochs}


def cmd_run(args: argparse.Namespace, argv: list[str] | None = None) -> list[dict]:
    """Simulate (unless the files of this world are there), build, map, run the peers; write JSON and report."""
    argv = sys.argv[1:] if argv is None else argv
    root = Path(args.workdir)
    work = root / "hard" if args.world == "hard" else root  # the easy world's files stay where they were
    work.mkdir(parents=True, exist_ok=True)
    log = root / "stderr.log"
    results: list[dict] = [run_header(args, argv)]

    def save() -> None:  # after every phase: a run stopped half-way keeps what it measured
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=1))

    for n in args.sizes:
        ref = work / f"ref_{n}.h5ad"
        stamp = work / f"ref_{n}.world.json"
        wanted = {**world_options(args), "queries": sorted(args.queries)}
        files = [ref, *(work / f"query_{q}.h5ad" for q in args.queries)]
        current = json.loads(stamp.read_text()) if stamp.exists() else None
        if args.resimulate or current != wanted or not all(f.exists() for f in files):
            stamp.unlink(missing_ok=True)
            results += child(simulate_argv(args, n, work), log)
            stamp.write_text(json.dumps(wanted))
            save()
        model = work / f"model_{n}"
        build = ["build", "--ref", str(ref), "--model", str(model), "--device", args.device]
        if not args.skip_build:
            results += child(build + (["--epochs", str(args.epochs)] if args.epochs else []), log)
            save()
        for q in args.queries:
            for phase in ("map", "map-query"):
                results += child([phase, "--model", str(model), "--query", str(work / f"query_{q}.h5ad"),
                                  "--device", args.device], log)
                save()
        for peer in args.peers:
            results += child(["peer", "--method", peer, "--ref", str(ref), "--query",
                              str(work / f"query_{min(args.queries)}.h5ad")], log)
            save()
        if args.converge_epochs:
            results += child(["converge", "--ref", str(ref), "--query", str(work / f"query_{min(args.queries)}.h5ad"),
                              "--epochs", str(args.converge_epochs), "--device", args.device], log)
    results[0]["uptime_end"] = uptime()
    results[0]["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    save()
    if args.out:
        print(f"wrote {args.out}")
    if args.report:
        from benchmarks.scale_report import write_report

        write_report(results, args.report)
        print(f"wrote {args.report}")
    return results


def cmd_report(args: argparse.Namespace) -> None:
    """The markdown report of a ``run``'s JSON (``--out``)."""
    from benchmarks.scale_report import write_report

    write_report(json.loads(Path(args.results).read_text()), args.out)
    print(f"wrote {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("simulate")
    s.add_argument("--n-ref", type=int, required=True)
    s.add_argument("--genes", type=int, default=2000)
    s.add_argument("--queries", type=int, nargs="+", default=[10_000])
    s.add_argument("--types", type=int, default=10)
    s.add_argument("--batches", type=int, default=4, help="reference batches + 1 held-out query batch")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--markers", type=int, default=20, help="marker genes per type (fewer: harder)")
    s.add_argument("--batch-effect", type=float, default=0.5, help="sd of log batch effects (larger: harder)")
    s.add_argument("--depth", type=float, default=2000.0, help="mean counts per cell (lower: sparser, harder)")
    s.add_argument("--workdir", required=True)
    sh = sub.add_parser("simulate-hard", help=cmd_simulate_hard.__doc__.splitlines()[0])
    sh.add_argument("--n-ref", type=int, required=True)
    sh.add_argument("--queries", type=int, nargs="+", default=[10_000])
    sh.add_argument("--genes", type=int, default=None, help="default: the hard world's (HARD_SIMULATION)")
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--workdir", required=True)
    b = sub.add_parser("build")
    b.add_argument("--ref", required=True)
    b.add_argument("--model", required=True)
    b.add_argument("--epochs", type=int, default=None, help="default: the package's choice by size")
    b.add_argument("--device", default="auto")
    c = sub.add_parser("converge")
    c.add_argument("--ref", required=True)
    c.add_argument("--query", required=True)
    c.add_argument("--epochs", type=int, default=6)
    c.add_argument("--probe", type=int, default=5000)
    c.add_argument("--device", default="auto")
    m = sub.add_parser("map")
    m.add_argument("--model", required=True)
    m.add_argument("--query", required=True)
    m.add_argument("--nprobe", type=int, default=16)
    m.add_argument("--recall-sample", type=int, default=5000)
    m.add_argument("--device", default="auto")
    mq = sub.add_parser("map-query", help=cmd_map_query.__doc__.splitlines()[0])
    mq.add_argument("--model", required=True)
    mq.add_argument("--query", required=True)
    mq.add_argument("--recall-sample", type=int, default=5000)
    mq.add_argument("--device", default="auto")
    mem = sub.add_parser("memory", help=cmd_memory.__doc__.splitlines()[0])
    mem.add_argument("--n-ref", type=int, required=True)
    mem.add_argument("--queries", type=int, nargs="+", default=[10_000, 100_000])
    mem.add_argument("--genes", type=int, default=2000)
    mem.add_argument("--types", type=int, default=10)
    mem.add_argument("--batches", type=int, default=4)
    mem.add_argument("--seed", type=int, default=0)
    mem.add_argument("--markers", type=int, default=20)
    mem.add_argument("--batch-effect", type=float, default=0.5)
    mem.add_argument("--depth", type=float, default=2000.0)
    mem.add_argument("--epochs", type=int, default=None)
    mem.add_argument("--batch-size", type=int, nargs="+", default=[256], help="one build per size")
    mem.add_argument("--precision", default=None, help="Lightning precision, e.g. bf16-mixed")
    mem.add_argument("--device", default="auto")
    q = sub.add_parser("search", help=cmd_search.__doc__.splitlines()[0])
    q.add_argument("--n-ref", type=int, default=1_000_000)
    q.add_argument("--n-query", type=int, default=100_000)
    q.add_argument("--dim", type=int, default=128)
    q.add_argument("--k", type=int, default=5)
    q.add_argument("--device", default="cuda")
    e = sub.add_parser("peer")
    e.add_argument("--method", required=True, help="celltypist, symphony, pca_knn, scanvi")
    e.add_argument("--ref", required=True)
    e.add_argument("--query", required=True)
    f = sub.add_parser("profile")
    f.add_argument("--cells", type=int, default=20_000)
    f.add_argument("--genes", type=int, default=2000)
    f.add_argument("--repeats", type=int, default=20)
    f.add_argument("--rows", type=int, default=15)
    f.add_argument("--backends", nargs="+", default=["torch", "fused"], help="on a GPU: torch (and compiled)")
    f.add_argument("--device", default="cpu")
    f.add_argument("--precision", default="32", help="32 or bf16 (autocast on the device)")
    f.add_argument("--batch-size", type=int, default=256)
    r = sub.add_parser("run", help=cmd_run.__doc__.splitlines()[0])
    r.add_argument("--world", choices=["easy", "hard"], default="easy",
                   help="easy: simulate() with the options below; hard: write_hard_simulation (the options "
                        "--types ... --depth do not apply)")
    r.add_argument("--seed", type=int, default=0, help="seed of the hard world")
    r.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    r.add_argument("--genes", type=int, default=None, help="default: 2000 (easy), the hard world's 3000 (hard)")
    r.add_argument("--types", type=int, default=10)
    r.add_argument("--batches", type=int, default=4, help="reference batches + 1 held-out query batch")
    r.add_argument("--markers", type=int, default=20)
    r.add_argument("--batch-effect", type=float, default=0.5)
    r.add_argument("--depth", type=float, default=2000.0)
    r.add_argument("--skip-build", action="store_true", help="reuse the model of an earlier run")
    r.add_argument("--peers", nargs="*", default=[], help="peer methods run on the same files (in memory)")
    r.add_argument("--queries", type=int, nargs="+", default=[10_000, 100_000])
    r.add_argument("--epochs", type=int, default=None)
    r.add_argument("--converge-epochs", type=int, default=0)
    r.add_argument("--device", default="auto")
    r.add_argument("--workdir", default="/tmp/scconcerto_scale")
    r.add_argument("--resimulate", action="store_true")
    r.add_argument("--out", default=None, help="JSON of every phase's record, rewritten after each phase")
    r.add_argument("--report", default=None, help="markdown results file written at the end (as `report`)")
    rp = sub.add_parser("report", help=cmd_report.__doc__.splitlines()[0])
    rp.add_argument("results", help="a run's JSON (--out)")
    rp.add_argument("--out", required=True, help="markdown file to write, e.g. benchmarks/SCALE.md")
    args = p.parse_args()
    {"simulate": cmd_simulate, "simulate-hard": cmd_simulate_hard, "build": cmd_build, "report": cmd_report, "converge": cmd_converge, "map": cmd_map,
     "profile": cmd_profile, "peer": cmd_peer, "run": cmd_run, "memory": cmd_memory,
     "search": cmd_search, "map-query": cmd_map_query}[args.cmd](args)


if __name__ == "__main__":
    main()
