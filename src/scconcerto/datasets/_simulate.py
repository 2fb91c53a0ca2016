"""Seeded single-cell (CITE-seq-like) count simulator.

The simulator draws a small set of global parameters (gene expression profile,
cell-type marker programs, batch effects, cell labels) from a generator seeded
with ``seed`` and then generates the count matrix in fixed-size *blocks* of
cells, each with its own generator derived deterministically from
``(seed, block index)``. The block size depends only on ``n_genes``, so the
data are bitwise identical whatever ``chunk_size`` is used to assemble or write
them: :func:`simulate` and :func:`simulate_to_h5ad` produce the same cells.

Model
-----
* Base profile: log-normal gene means (clipped upper tail), i.e. a few highly
  expressed genes and many lowly expressed ones.
* Cell types: each type up-regulates its own disjoint set of
  ``markers_per_type`` genes (fold change ``marker_fold_change``, 4-8x by
  default) and down-regulates a few background genes (``down_fold_change``,
  3-6x). With ``n_major`` the types are grouped into major groups (lineages)
  that share an additional program of ``lineage_markers`` genes of their own
  (``lineage_fold_change``, 3-6x).
* Batches: gene-wise multiplicative log-normal effects (sd ``batch_effect``)
  and per-batch sequencing depth factors spread over [0.5, 2].
* Counts: negative binomial (gamma-Poisson) with size ``dispersion``
  (variance ``mu + mu**2 / dispersion``) around ``library_size * profile``.
* Proteins: each protein is tied to one cell type (or one major group); its
  expected level is a background plus a 5-20x signal in target cells, times a
  per-cell capture factor and per-batch factor; counts are negative binomial.

``batches`` generates only the cells of some batches of the same world (same
genes, types, batch effects and depths): a reference of some batches and a
query of a held-out one, each with its own cells and noise.
:func:`simulate_hard` is that split in a hard world (:data:`HARD_SIMULATION`:
subtypes of a lineage told apart by a handful of genes with modest fold
changes, gene-specific batch effects) and :func:`write_hard_simulation`
writes it to backed ``.h5ad`` files chunk by chunk.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._hardware import available_cpus

__all__ = ["HARD_SIMULATION", "simulate", "simulate_hard", "simulate_to_h5ad", "write_hard_simulation"]

#: Version of the generative model; bump when the random stream changes.
SIMULATOR_VERSION = 1

# Fixed model constants.
_GENE_LOG_SD = 2.5  # sd of log gene means
_GENE_LOG_CLIP = 2.5  # clip log gene means at this many sd (no single gene dominates)
_TYPE_NOISE_SD = 0.1  # default sd of the type-specific perturbation of every gene
_MARKER_FC = (4.0, 8.0)
_MAJOR_FC = (3.0, 6.0)
_DOWN_FC = (3.0, 6.0)
_COMPOSITION_SD = 0.3  # per-batch log shift of the type frequencies
_LIB_LOG_SD = 0.35  # within-batch sd of log library size
_DEPTH_RANGE = (0.5, 2.0)  # per-batch depth factors
_PROT_BACKGROUND = 30.0
_PROT_FC = (5.0, 20.0)
_PROT_CELL_SD = 0.3
_PROT_BATCH_SD = 0.2
_BLOCK_ELEMENTS = 1 << 22  # dense cells x genes elements generated at once


def _block_cells(n_genes: int) -> int:
    """Cells per random-stream block (depends on ``n_genes`` only)."""
    return int(max(64, min(4096, _BLOCK_ELEMENTS // max(n_genes, 1))))


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float], size: Any) -> np.ndarray:
    lo, hi = lo_hi
    return rng.uniform(np.log(lo), np.log(hi), size)


def _allocate(n: int, p: np.ndarray, minimum: int) -> np.ndarray:
    """Split ``n`` items into ``len(p)`` groups, each >= ``minimum``, ~ proportional to ``p``.

    Largest-remainder rounding; deterministic.
    """
    k = len(p)
    rest = n - k * minimum
    if rest < 0:
        raise ValueError(f"cannot allocate {n} items into {k} groups of at least {minimum}")
    share = rest * np.asarray(p, dtype=np.float64) / np.sum(p)
    base = np.floor(share).astype(np.int64)
    left = rest - int(base.sum())
    if left > 0:
        order = np.argsort(-(share - base), kind="stable")
        base[order[:left]] += 1
    return base + minimum


@dataclass
class _Params:
    n_cells: int
    n_genes: int
    n_types: int
    n_batches: int
    n_proteins: int
    seed: int
    dispersion: float
    block: int
    stream: tuple[int, ...]  # spawn key prefix of the per-block generators
    type_codes: np.ndarray  # (n_cells,) int
    batch_codes: np.ndarray  # (n_cells,) int
    rates: np.ndarray  # (n_types * n_batches, n_genes) float64, rows sum to 1
    log_depth: np.ndarray  # (n_batches,) log mean library size per batch
    prot_levels: np.ndarray  # (n_types, n_proteins) expected protein level per type
    prot_batch: np.ndarray  # (n_batches,) protein capture factor per batch
    obs: pd.DataFrame
    var: pd.DataFrame
    uns: dict[str, Any]


#: The generative model's options and their defaults (:func:`simulate`'s keyword arguments).
_MODEL_DEFAULTS: dict[str, Any] = dict(
    n_types=5, n_batches=2, n_proteins=0, n_major=None, seed=0, markers_per_type=20, batch_effect=0.5,
    mean_depth=2000.0, dispersion=5.0, marker_fold_change=_MARKER_FC, down_fold_change=_DOWN_FC,
    lineage_markers=None, lineage_fold_change=_MAJOR_FC, type_noise=_TYPE_NOISE_SD, batches=None,
)  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _fold_range(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and 1.0 <= lo <= hi):
        raise ValueError(f"{name} must satisfy 1 <= low <= high (finite), got {value!r}")
    return lo, hi


def _batch_subset(batches: Any, n_batches: int) -> tuple[int, ...] | None:
    if batches is None:
        return None
    chosen = [batches] if _is_int(batches) else list(batches)
    if not chosen or not all(_is_int(b) for b in chosen):
        raise TypeError(f"batches must be batch numbers (integers) or None, got {batches!r}")
    if len(set(chosen)) != len(chosen) or not all(0 <= b < n_batches for b in chosen):
        raise ValueError(f"batches must be distinct batch numbers in [0, n_batches={n_batches}), got {batches!r}")
    return tuple(sorted(int(b) for b in chosen))


def _validate(n_cells: int, n_genes: int, chunk_size: int, model: dict[str, Any]) -> dict[str, Any]:
    """Check the arguments; returns the model options with fold-change ranges and batches normalized."""
    unknown = set(model) - set(_MODEL_DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    m = {**_MODEL_DEFAULTS, **model}
    n_types, n_batches, n_proteins, n_major = m["n_types"], m["n_batches"], m["n_proteins"], m["n_major"]
    markers_per_type = m["markers_per_type"]
    ints = dict(n_cells=n_cells, n_genes=n_genes, n_types=n_types, n_batches=n_batches, n_proteins=n_proteins,
                seed=m["seed"], markers_per_type=markers_per_type, chunk_size=chunk_size)
    for name, value in ints.items():
        if not _is_int(value):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    for name in ("n_cells", "n_genes", "n_types", "n_batches", "markers_per_type", "chunk_size"):
        if ints[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {ints[name]}")
    if n_proteins < 0:
        raise ValueError(f"n_proteins must be >= 0, got {n_proteins}")
    if m["seed"] < 0:
        raise ValueError(f"seed must be >= 0, got {m['seed']}")
    if n_major is not None:
        if not _is_int(n_major):
            raise TypeError(f"n_major must be an integer or None, got {n_major!r}")
        if not 1 <= n_major <= n_types:
            raise ValueError(f"n_major must be in [1, n_types={n_types}], got {n_major}")
    lineage_markers = m["lineage_markers"]
    if lineage_markers is not None:
        if not _is_int(lineage_markers):
            raise TypeError(f"lineage_markers must be an integer or None, got {lineage_markers!r}")
        if lineage_markers < 1:
            raise ValueError(f"lineage_markers must be >= 1, got {lineage_markers}")
    for name in ("marker_fold_change", "down_fold_change", "lineage_fold_change"):
        m[name] = _fold_range(name, m[name])
    m["batches"] = _batch_subset(m["batches"], n_batches)
    n_sources = n_batches if m["batches"] is None else len(m["batches"])
    if n_cells < n_types * n_sources:
        raise ValueError(
            f"n_cells={n_cells} is too small for every one of {n_types} types to appear "
            f"in every one of {n_sources} batches (need >= {n_types * n_sources})"
        )
    n_program = n_types * markers_per_type + (n_major or 0) * (lineage_markers or markers_per_type)
    n_down = max(1, markers_per_type // 5)
    if n_genes < n_program + n_down:
        raise ValueError(
            f"n_genes={n_genes} is too small for {n_program} marker-program genes "
            f"plus {n_down} down-regulated genes; lower markers_per_type or raise n_genes"
        )
    for name in ("batch_effect", "mean_depth", "dispersion", "type_noise"):
        value = m[name]
        if not isinstance(value, (int, float, np.integer, np.floating)) or np.isnan(value):
            raise TypeError(f"{name} must be a number, got {value!r}")
    if m["batch_effect"] < 0 or not np.isfinite(m["batch_effect"]):
        raise ValueError(f"batch_effect must be finite and >= 0, got {m['batch_effect']}")
    if m["type_noise"] < 0 or not np.isfinite(m["type_noise"]):
        raise ValueError(f"type_noise must be finite and >= 0, got {m['type_noise']}")
    if m["mean_depth"] <= 0 or not np.isfinite(m["mean_depth"]):
        raise ValueError(f"mean_depth must be finite and > 0, got {m['mean_depth']}")
    if m["dispersion"] <= 0:
        raise ValueError(f"dispersion must be > 0 (np.inf for Poisson), got {m['dispersion']}")
    return m


def _make_params(
    n_cells: int,
    n_genes: int,
    n_types: int,
    n_batches: int,
    n_proteins: int,
    n_major: int | None,
    seed: int,
    markers_per_type: int,
    batch_effect: float,
    mean_depth: float,
    dispersion: float,
    marker_fold_change: tuple[float, float] = _MARKER_FC,
    down_fold_change: tuple[float, float] = _DOWN_FC,
    lineage_markers: int | None = None,
    lineage_fold_change: tuple[float, float] = _MAJOR_FC,
    type_noise: float = _TYPE_NOISE_SD,
    batches: tuple[int, ...] | None = None,
) -> _Params:
    """Draw all global (non per-cell-count) parameters from ``(seed, 0)``.

    The world (genes, programs, batch effects, depths, type and batch frequencies) is drawn before the
    cells, so it does not depend on ``n_cells`` nor on ``batches``.
    """
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0,)))
    K, B, G, P = n_types, n_batches, n_genes, n_proteins
    type_names = [f"type_{k}" for k in range(K)]
    batch_names = [f"batch_{b}" for b in range(B)]
    gene_names = [f"gene_{g}" for g in range(G)]
    major_names = [f"major_{m}" for m in range(n_major)] if n_major else []
    n_lineage = lineage_markers or markers_per_type

    # --- base profile -----------------------------------------------------------
    log_base = np.minimum(rng.normal(0.0, _GENE_LOG_SD, G), _GENE_LOG_CLIP * _GENE_LOG_SD)

    # --- hierarchy ------------------------------------------------------------
    if n_major:
        groups = np.array_split(rng.permutation(K), n_major)
        type_major = np.empty(K, dtype=np.int64)
        for m, members in enumerate(groups):
            type_major[members] = m
    else:
        type_major = None

    # --- marker programs (disjoint; biased towards expressed genes) -------------
    n_type_genes = K * markers_per_type
    order = np.argsort(-(log_base + rng.normal(0.0, _GENE_LOG_SD, G)), kind="stable")
    chosen = rng.permutation(order[: n_type_genes + (n_major or 0) * n_lineage])
    type_genes = np.sort(chosen[:n_type_genes].reshape(K, markers_per_type), axis=1)
    lineage_genes = np.sort(chosen[n_type_genes:].reshape(n_major or 0, n_lineage), axis=1)
    background = np.setdiff1d(np.arange(G), chosen)
    n_down = max(1, markers_per_type // 5)

    log_type = log_base[None, :] + rng.normal(0.0, 1.0, (K, G)) * type_noise
    down_genes = np.empty((K, n_down), dtype=np.int64)
    for k in range(K):  # loops over types only (small)
        log_type[k, type_genes[k]] += _log_uniform(rng, marker_fold_change, markers_per_type)
        down = np.sort(rng.choice(background, size=n_down, replace=False))
        down_genes[k] = down
        log_type[k, down] -= _log_uniform(rng, down_fold_change, n_down)
    if n_major:
        for m in range(n_major):
            genes = lineage_genes[m]
            members = np.flatnonzero(type_major == m)
            fc = _log_uniform(rng, lineage_fold_change, n_lineage)
            log_type[np.ix_(members, genes)] += fc[None, :]

    # --- batches ----------------------------------------------------------------
    log_batch = rng.normal(0.0, batch_effect, (B, G))
    lo, hi = np.log(_DEPTH_RANGE[0]), np.log(_DEPTH_RANGE[1])
    if B == 1:
        log_factor = np.zeros(1)
    else:
        grid = np.linspace(lo, hi, B)
        jitter = rng.uniform(-0.1, 0.1, B) * (hi - lo) / (B - 1)
        log_factor = rng.permutation(np.clip(grid + jitter, lo, hi))
    depth_factor = np.exp(log_factor)
    log_depth = np.log(mean_depth) + log_factor - _LIB_LOG_SD**2 / 2.0

    rates = np.exp(log_type[:, None, :] + log_batch[None, :, :]).reshape(K * B, G)
    rates /= rates.sum(axis=1, keepdims=True)

    # --- cell labels: unequal but every type in every batch ---------------------
    type_freq = 0.4 / K + 0.6 * rng.dirichlet(np.full(K, 2.0))
    batch_freq = rng.dirichlet(np.full(B, 20.0))
    composition = [type_freq * np.exp(rng.normal(0.0, _COMPOSITION_SD, K)) for _ in range(B)]  # mild shifts
    present = np.arange(B) if batches is None else np.asarray(batches, dtype=np.int64)
    batch_sizes = _allocate(n_cells, batch_freq[present], K)
    type_codes = np.empty(n_cells, dtype=np.int64)
    batch_codes = np.empty(n_cells, dtype=np.int64)
    start = 0
    for b, size in zip(present, batch_sizes):
        p_b = composition[b]
        counts = _allocate(int(size), p_b / p_b.sum(), 1)
        stop = start + int(size)
        type_codes[start:stop] = np.repeat(np.arange(K), counts)
        batch_codes[start:stop] = b
        start = stop
    perm = rng.permutation(n_cells)
    type_codes = type_codes[perm]
    batch_codes = batch_codes[perm]

    # --- proteins -----------------------------------------------------------------
    targets = [("type", k) for k in range(K)] + [("major", m) for m in range(n_major or 0)]
    prot_levels = np.zeros((K, P))
    prot_batch = np.exp(rng.normal(0.0, _PROT_BATCH_SD, B)) if P else np.ones(B)
    protein_names = [f"prot_{j}" for j in range(P)]
    protein_markers: dict[str, list[str]] = {}
    protein_markers_major: dict[str, list[str]] = {}
    protein_targets: dict[str, str] = {}
    if P:
        target_order = rng.permutation(len(targets))
        bg = np.exp(rng.normal(np.log(_PROT_BACKGROUND), 0.5, P))
        fc = np.exp(_log_uniform(rng, _PROT_FC, P))
        for j in range(P):
            kind, idx = targets[target_order[j % len(targets)]]
            prot_levels[:, j] = bg[j]
            if kind == "type":
                members = np.array([idx])
                protein_targets[protein_names[j]] = type_names[idx]
            else:
                members = np.flatnonzero(type_major == idx)
                protein_targets[protein_names[j]] = major_names[idx]
                protein_markers_major.setdefault(major_names[idx], []).append(protein_names[j])
            prot_levels[members, j] = bg[j] * fc[j]
            for k in members:
                protein_markers.setdefault(type_names[k], []).append(protein_names[j])

    # --- annotations --------------------------------------------------------------
    # cells of a batch subset are named after it, so that a reference and its query never share names
    prefix = "cell_" if batches is None else f"cell_b{'-'.join(str(b) for b in batches)}_"
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(type_codes, categories=type_names),
            # only the batches generated are categories (an empty one would trip per-batch tools)
            "batch": pd.Categorical.from_codes(np.searchsorted(present, batch_codes),
                                               categories=[batch_names[b] for b in present]),
        },
        index=pd.Index([f"{prefix}{i}" for i in range(n_cells)]),
    )
    if n_major:
        obs["cell_type_major"] = pd.Categorical.from_codes(type_major[type_codes], categories=major_names)

    marker_of = np.full(G, "", dtype=object)
    for k in range(K):
        marker_of[type_genes[k]] = type_names[k]
    for m in range(n_major or 0):
        marker_of[lineage_genes[m]] = major_names[m]
    base = np.exp(log_base)
    var = pd.DataFrame(
        {
            "base_expression": base / base.sum(),
            "marker_of": pd.Categorical(marker_of, categories=["", *type_names, *major_names]),
        },
        index=pd.Index(gene_names),
    )

    names = np.asarray(gene_names, dtype=object)
    sim: dict[str, Any] = {
        "simulator_version": SIMULATOR_VERSION,
        "n_cells": int(n_cells),
        "n_genes": int(n_genes),
        "n_types": int(n_types),
        "n_batches": int(n_batches),
        "n_proteins": int(n_proteins),
        "seed": int(seed),
        "markers_per_type": int(markers_per_type),
        "batch_effect": float(batch_effect),
        "mean_depth": float(mean_depth),
        "dispersion": float(dispersion),
        "marker_fold_change": [float(v) for v in marker_fold_change],
        "down_fold_change": [float(v) for v in down_fold_change],
        "type_noise": float(type_noise),
        "batches": [batch_names[b] for b in present],
        "marker_genes": {type_names[k]: names[type_genes[k]].tolist() for k in range(K)},
        "downregulated_genes": {type_names[k]: names[down_genes[k]].tolist() for k in range(K)},
        "type_frequencies": {type_names[k]: float(type_freq[k]) for k in range(K)},
        "batch_depth_factors": {batch_names[b]: float(depth_factor[b]) for b in range(B)},
    }
    if n_major:
        sim["n_major"] = int(n_major)
        sim["lineage_markers"] = int(n_lineage)
        sim["lineage_fold_change"] = [float(v) for v in lineage_fold_change]
        sim["major_marker_genes"] = {major_names[m]: names[lineage_genes[m]].tolist() for m in range(n_major)}
        sim["major_groups"] = {
            major_names[m]: [type_names[k] for k in np.flatnonzero(type_major == m)] for m in range(n_major)
        }
    if P:
        sim["protein_markers"] = protein_markers
        sim["protein_targets"] = protein_targets
        if protein_markers_major:
            sim["protein_markers_major"] = protein_markers_major
    uns: dict[str, Any] = {"simulation": sim}
    if P:
        uns["protein_names"] = protein_names

    # the cells of a batch subset draw their noise from their own streams
    stream = (1,) if batches is None else (2, int(sum(1 << b for b in batches)))
    return _Params(
        n_cells=n_cells,
        n_genes=G,
        n_types=K,
        n_batches=B,
        n_proteins=P,
        seed=int(seed),
        dispersion=float(dispersion),
        block=_block_cells(G),
        stream=stream,
        type_codes=type_codes,
        batch_codes=batch_codes,
        rates=rates,
        log_depth=log_depth,
        prot_levels=prot_levels,
        prot_batch=prot_batch,
        obs=obs,
        var=var,
        uns=uns,
    )


@dataclass
class _Chunk:
    """Rows ``start:stop`` of the simulated data as raw CSR arrays."""

    start: int
    stop: int
    data: np.ndarray  # float32
    indices: np.ndarray  # int32
    indptr: np.ndarray  # int64, starts at 0
    protein: np.ndarray  # (rows, P) float32
    protein_truth: np.ndarray  # (rows, P) float32


def _nb(rng: np.random.Generator, mu: np.ndarray, theta: float) -> np.ndarray:
    """Negative binomial draws with mean ``mu`` and size ``theta`` (modifies ``mu``)."""
    if np.isfinite(theta):
        mu *= rng.standard_gamma(theta, size=mu.shape)
        mu /= theta
    return rng.poisson(mu)


def _generate_block(p: _Params, i: int) -> _Chunk:
    """Generate block ``i`` with its own generator seeded by ``(seed, *p.stream, i)``."""
    rng = np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(*p.stream, i)))
    start = i * p.block
    stop = min(start + p.block, p.n_cells)
    t = p.type_codes[start:stop]
    b = p.batch_codes[start:stop]
    n = stop - start

    lib = np.exp(p.log_depth[b] + rng.normal(0.0, _LIB_LOG_SD, n))
    mu = p.rates[t * p.n_batches + b]  # (n, G) fancy index -> new array
    mu *= lib[:, None]
    counts = _nb(rng, mu, p.dispersion)
    del mu
    nz_rows, nz_cols = np.nonzero(counts)  # row-major: sorted column indices per row
    data = counts[nz_rows, nz_cols].astype(np.float32)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(nz_rows, minlength=n), out=indptr[1:])
    indices = nz_cols.astype(np.int32)
    del counts, nz_rows, nz_cols

    if p.n_proteins:
        cell_factor = np.exp(rng.normal(-_PROT_CELL_SD**2 / 2.0, _PROT_CELL_SD, n))
        truth = p.prot_levels[t] * (cell_factor * p.prot_batch[b])[:, None]
        prot = _nb(rng, truth.copy(), p.dispersion).astype(np.float32)
        truth = truth.astype(np.float32)
    else:
        prot = np.zeros((n, 0), dtype=np.float32)
        truth = np.zeros((n, 0), dtype=np.float32)
    return _Chunk(start, stop, data, indices, indptr, prot, truth)


def _slice_rows(c: _Chunk, r0: int, r1: int) -> _Chunk:
    """Rows ``r0:r1`` (relative to ``c.start``) of a chunk."""
    lo, hi = c.indptr[r0], c.indptr[r1]
    return _Chunk(
        c.start + r0,
        c.start + r1,
        c.data[lo:hi],
        c.indices[lo:hi],
        c.indptr[r0 : r1 + 1] - lo,
        c.protein[r0:r1],
        c.protein_truth[r0:r1],
    )


def _concat(parts: list[_Chunk]) -> _Chunk:
    """Concatenate consecutive chunks row-wise."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [int(c.indptr[-1]) for c in parts[:-1]])
    indptr = np.concatenate([parts[0].indptr[:1]] + [c.indptr[1:] + o for c, o in zip(parts, offsets)])
    return _Chunk(
        parts[0].start,
        parts[-1].stop,
        np.concatenate([c.data for c in parts]),
        np.concatenate([c.indices for c in parts]),
        indptr,
        np.concatenate([c.protein for c in parts]),
        np.concatenate([c.protein_truth for c in parts]),
    )


def _resolve_jobs(n_jobs: int | None) -> int:
    """Worker threads for block generation: ``None`` is every core this process may use (at most 16)."""
    if n_jobs is None:
        return available_cpus(cap=16)
    if int(n_jobs) < 1:
        raise ValueError(f"n_jobs must be at least 1 (or None for every core), got {n_jobs}.")
    return int(n_jobs)


def _iter_blocks(p: _Params, n_jobs: int) -> Iterator[_Chunk]:
    """The blocks in order, generated by ``n_jobs`` threads (numpy's samplers release the GIL).

    Each block has its own seeded generator, so the values do not depend on ``n_jobs``;
    at most ``n_jobs + 1`` blocks are in flight.
    """
    n_blocks = -(-p.n_cells // p.block)
    if n_jobs == 1:
        for i in range(n_blocks):
            yield _generate_block(p, i)
        return
    with ThreadPoolExecutor(n_jobs) as pool:
        window: deque = deque()
        for i in range(n_blocks):
            window.append(pool.submit(_generate_block, p, i))
            if len(window) > n_jobs:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _iter_chunks(p: _Params, chunk_size: int, n_jobs: int = 1) -> Iterator[_Chunk]:
    """Yield consecutive chunks of exactly ``chunk_size`` rows (last may be shorter).

    The random stream is defined by fixed blocks, so the values do not depend on
    ``chunk_size`` (nor on ``n_jobs``).
    """
    pending: list[_Chunk] = []
    n_pending = 0
    for blk in _iter_blocks(p, n_jobs):
        pos = 0
        n_blk = blk.stop - blk.start
        while pos < n_blk:
            take = min(chunk_size - n_pending, n_blk - pos)
            pending.append(blk if (pos == 0 and take == n_blk) else _slice_rows(blk, pos, pos + take))
            n_pending += take
            pos += take
            if n_pending == chunk_size:
                yield _concat(pending)
                pending, n_pending = [], 0
    if pending:
        yield _concat(pending)


def simulate(
    n_cells: int = 1000,
    n_genes: int = 500,
    n_types: int = 5,
    n_batches: int = 2,
    n_proteins: int = 0,
    n_major: int | None = None,
    seed: int = 0,
    markers_per_type: int = 20,
    batch_effect: float = 0.5,
    mean_depth: float = 2000.0,
    dispersion: float = 5.0,
    chunk_size: int = 50_000,
    n_jobs: int | None = None,
    *,
    marker_fold_change: tuple[float, float] = _MARKER_FC,
    down_fold_change: tuple[float, float] = _DOWN_FC,
    lineage_markers: int | None = None,
    lineage_fold_change: tuple[float, float] = _MAJOR_FC,
    type_noise: float = _TYPE_NOISE_SD,
    batches: Sequence[int] | int | None = None,
) -> ad.AnnData:
    """Simulate a seeded single-cell RNA (optionally CITE-seq) data set.

    Parameters
    ----------
    n_cells
        Number of cells. Must be at least ``n_types`` times the number of
        batches generated so that every type appears in every batch.
    n_genes
        Number of genes. Must hold ``n_types * markers_per_type + n_major *
        lineage_markers`` disjoint program genes plus a few down-regulated genes.
    n_types
        Number of (fine) cell types, named ``"type_0"``, ...
    n_batches
        Number of batches in the world, named ``"batch_0"``, ...
    n_proteins
        Number of surface proteins (0 for RNA only). Each protein marks one cell
        type or, when ``n_major`` is given, possibly one major group.
    n_major
        If given, group the types into this many major groups (lineages,
        ``"major_0"``, ...) sharing an extra expression program; stored in
        ``obs['cell_type_major']``.
    seed
        Non-negative seed. The same seed gives a bitwise identical result.
    markers_per_type
        Up-regulated marker genes per type. About ``markers_per_type // 5`` (at
        least 1) background genes are down-regulated per type.
    batch_effect
        Standard deviation of the gene-wise log-normal multiplicative batch
        effects (0 disables them; depth differences remain).
    mean_depth
        Typical library size (total counts per cell). Each batch gets a depth
        factor in [0.5, 2] (spread evenly on the log scale, geometric mean
        about 1); library sizes are log-normal around ``mean_depth * factor``.
    dispersion
        Negative binomial size parameter: variance is ``mu + mu**2 / dispersion``.
        ``np.inf`` gives Poisson counts.
    chunk_size
        Number of cells assembled at a time. Does not change the result.
    n_jobs
        Threads generating blocks of cells (``None``: every available core, at
        most 16). Does not change the result.
    marker_fold_change
        ``(low, high)``: each type's marker genes are up-regulated by a factor
        drawn log-uniformly in this range.
    down_fold_change
        ``(low, high)``: the same for the down-regulated genes.
    lineage_markers
        Program genes per major group (``None``: ``markers_per_type``).
    lineage_fold_change
        ``(low, high)``: fold changes of the major groups' programs.
    type_noise
        Standard deviation of each type's log-normal perturbation of every gene
        (small differences between any two types spread over all genes).
    batches
        Generate only cells of these batch numbers (``None``: every batch).
        The world (genes, programs, batch effects, depths) is the same whatever
        ``batches`` and ``n_cells`` are; the cells of a subset have their own
        names (``cell_b3_0``, ...) and noise, so a reference of some batches and
        a query of another are disjoint draws of one world.

    Returns
    -------
    anndata.AnnData
        ``X``: CSR float32 counts (integer-valued, sorted indices, no explicit
        zeros). ``obs``: ``cell_type``, ``batch`` (and ``cell_type_major``)
        categoricals, index ``cell_0``... ``var``: ``base_expression`` (relative
        base profile) and ``marker_of`` (program the gene belongs to, ``""`` if
        none), index ``gene_0``... If ``n_proteins > 0``: ``obsm['protein']``
        (NB counts, float32), ``obsm['protein_truth']`` (noise-free expected
        level, i.e. the NB mean per cell, float32) and ``uns['protein_names']``.
        ``uns['simulation']``: the parameters, ``marker_genes`` {type: genes},
        ``downregulated_genes``, ``type_frequencies``, ``batch_depth_factors``,
        ``batches`` (those generated), and when applicable ``major_marker_genes``,
        ``major_groups``, ``protein_markers`` {type: proteins}, ``protein_targets``
        {protein: type or major group}.

    Notes
    -----
    Counts are generated in blocks of cells with generators seeded from
    ``(seed, block index)``; only one dense block of roughly ``2**22`` values
    exists at a time. :func:`simulate_to_h5ad` with the same arguments writes
    the same data.

    Examples
    --------
    >>> adata = simulate(n_cells=200, n_genes=300, n_types=3, seed=1)
    >>> adata.shape
    (200, 300)
    """
    model = dict(n_types=n_types, n_batches=n_batches, n_proteins=n_proteins, n_major=n_major, seed=seed,
                 markers_per_type=markers_per_type, batch_effect=batch_effect, mean_depth=mean_depth,
                 dispersion=dispersion, marker_fold_change=marker_fold_change, down_fold_change=down_fold_change,
                 lineage_markers=lineage_markers, lineage_fold_change=lineage_fold_change, type_noise=type_noise,
                 batches=batches)
    p = _make_params(n_cells, n_genes, **_validate(n_cells, n_genes, chunk_size, model))
    full = _concat(list(_iter_chunks(p, int(chunk_size), _resolve_jobs(n_jobs))))
    X = sp.csr_matrix((full.data, full.indices, full.indptr), shape=(n_cells, n_genes))
    X.has_sorted_indices = True
    adata = ad.AnnData(X=X, obs=p.obs, var=p.var, uns=p.uns)
    if n_proteins:
        adata.obsm["protein"] = full.protein
        adata.obsm["protein_truth"] = full.protein_truth
    return adata


def _set_encoding(obj: h5py.Group | h5py.Dataset, encoding_type: str, version: str) -> None:
    obj.attrs["encoding-type"] = encoding_type
    obj.attrs["encoding-version"] = version


def simulate_to_h5ad(
    path: str | os.PathLike[str],
    n_cells: int,
    n_genes: int,
    chunk_size: int = 50_000,
    n_jobs: int | None = None,
    **kwargs: Any,
) -> Path:
    """Simulate a (large) data set and write it to ``.h5ad`` chunk by chunk.

    The result is identical to ``simulate(n_cells, n_genes, **kwargs)`` but at
    most one chunk of ``X`` is held in memory. The file is written to a
    temporary file in the same directory and moved into place atomically.

    Parameters
    ----------
    path
        Destination ``.h5ad`` path; its folder is created. A file scConcerto wrote there is replaced; any
        other file there is an error (your data is never overwritten). The file gets the permissions of
        a new file (umask).
    n_cells, n_genes
        Data set size, as in :func:`simulate`.
    chunk_size
        Cells generated and appended per write.
    n_jobs
        Threads generating blocks of cells (``None``: every available core, at
        most 16). Does not change the result.
    **kwargs
        Any other argument of :func:`simulate` (``n_types``, ``seed``, ``batches``, ...).

    Returns
    -------
    pathlib.Path
        The written path. It can be opened with ``anndata.read_h5ad(path)`` or
        ``anndata.read_h5ad(path, backed='r')``, and ``X`` with
        ``anndata.io.sparse_dataset``.
    """
    from anndata.io import write_elem

    unknown = set(kwargs) - set(_MODEL_DEFAULTS)
    if unknown:
        raise TypeError(f"simulate_to_h5ad() got unexpected keyword arguments: {sorted(unknown)}")
    p = _make_params(n_cells=n_cells, n_genes=n_genes, **_validate(n_cells, n_genes, chunk_size, kwargs))

    from .._io import hdf5_writer, write_atomic_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with hdf5_writer(tmp) as f:
            _set_encoding(f, "anndata", "0.1.0")
            write_elem(f, "obs", p.obs)
            write_elem(f, "var", p.var)
            write_elem(f, "uns", p.uns)
            for key in ("layers", "obsp", "varm", "varp"):
                write_elem(f, key, {})
            write_elem(f, "obsm", {})

            X = f.create_group("X")
            _set_encoding(X, "csr_matrix", "0.1.0")
            X.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
            h5_chunk = (1 << 18,)
            d_data = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=h5_chunk)
            d_indices = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=h5_chunk)
            d_indptr = X.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
            d_indptr[0] = 0
            if p.n_proteins:
                d_prot = f["obsm"].create_dataset("protein", shape=(n_cells, p.n_proteins), dtype=np.float32)
                d_truth = f["obsm"].create_dataset(
                    "protein_truth", shape=(n_cells, p.n_proteins), dtype=np.float32
                )
                _set_encoding(d_prot, "array", "0.2.0")
                _set_encoding(d_truth, "array", "0.2.0")

            nnz = 0
            for c in _iter_chunks(p, int(chunk_size), _resolve_jobs(n_jobs)):
                k = int(c.indptr[-1])
                d_data.resize((nnz + k,))
                d_indices.resize((nnz + k,))
                d_data[nnz : nnz + k] = c.data
                d_indices[nnz : nnz + k] = c.indices
                d_indptr[c.start + 1 : c.stop + 1] = c.indptr[1:] + nnz
                if p.n_proteins:
                    d_prot[c.start : c.stop] = c.protein
                    d_truth[c.start : c.stop] = c.protein_truth
                nnz += k

    return write_atomic_file(path, write, overwrite=True)


#: The hard world of :func:`simulate_hard`: 12 types in 4 lineages on 3,000 genes; a lineage has a
#: program of its own, and its subtypes differ from each other by a handful of genes with modest fold
#: changes, against gene-specific multiplicative batch effects of the same size and per-batch depths
#: spread over [0.5, 2]. Batches 0-2 are the reference, batch 3 is held out for the query.
HARD_SIMULATION: dict[str, Any] = dict(
    n_genes=3000, n_types=12, n_major=4, n_batches=4, markers_per_type=5, marker_fold_change=(1.5, 2.2),
    down_fold_change=(1.5, 2.2), lineage_markers=40, lineage_fold_change=(3.0, 6.0), batch_effect=0.5,
    mean_depth=2000.0, dispersion=5.0,
)  # fmt: skip

_PARTS = ("reference", "query")


def _hard_options(part: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if part not in _PARTS:
        raise ValueError(f"part must be 'reference' or 'query', got {part!r}")
    if "batches" in overrides:
        raise TypeError("the hard simulation chooses the batches itself (part='reference' or 'query')")
    options = {**HARD_SIMULATION, **overrides}
    n_batches = options["n_batches"]
    if not _is_int(n_batches) or n_batches < 2:
        raise ValueError(f"the hard simulation needs at least 2 batches (reference + query), got {n_batches!r}")
    options["batches"] = list(range(n_batches - 1)) if part == "reference" else [n_batches - 1]
    return options


def simulate_hard(n_cells: int = 2000, part: str = "reference", seed: int = 0, chunk_size: int = 50_000,
                  n_jobs: int | None = None, **overrides: Any) -> ad.AnnData:
    """Cells of the hard world (:data:`HARD_SIMULATION`): the reference's batches or the held-out query batch.

    Parameters
    ----------
    n_cells
        Number of cells.
    part
        ``"reference"``: cells of every batch but the last; ``"query"``: cells of the last batch, whose
        batch effects and depth the reference never shows. Both parts of one ``seed`` share the world.
    seed
        Seed of the world and of the cells.
    chunk_size, n_jobs
        As in :func:`simulate` (they do not change the result).
    **overrides
        Other values for :data:`HARD_SIMULATION` entries or :func:`simulate` arguments (except ``batches``).

    Examples
    --------
    >>> ref = simulate_hard(1200, seed=0, n_genes=1000)
    >>> query = simulate_hard(300, part="query", seed=0, n_genes=1000)
    >>> sorted(ref.obs["batch"].unique()), list(query.obs["batch"].unique())
    (['batch_0', 'batch_1', 'batch_2'], ['batch_3'])
    """
    options = _hard_options(part, overrides)
    return simulate(n_cells, seed=seed, chunk_size=chunk_size, n_jobs=n_jobs, **options)


def write_hard_simulation(directory: str | os.PathLike[str], n_reference: int, n_query: int, seed: int = 0,
                          overwrite: bool = False, chunk_size: int = 50_000, n_jobs: int | None = None,
                          **overrides: Any) -> tuple[Path, Path]:
    """Write the hard world's reference and held-out query to ``reference.h5ad`` and ``query.h5ad``.

    Each file is generated and written chunk by chunk (:func:`simulate_to_h5ad`): at most ``chunk_size``
    cells of ``X`` are in memory, so references of millions of cells can be written. The files are the
    same as ``simulate_hard(n_reference, "reference", seed)`` and ``simulate_hard(n_query, "query", seed)``.

    Parameters
    ----------
    directory
        Folder of the two files (created if needed).
    n_reference, n_query
        Cells of each part.
    seed
        Seed of the world and of the cells.
    overwrite
        Replace existing files; otherwise an existing file is an error.
    chunk_size, n_jobs
        Cells generated per write, and generating threads (they do not change the result).
    **overrides
        Other values for :data:`HARD_SIMULATION` entries.

    Returns
    -------
    reference, query
        The paths written.
    """
    directory = Path(directory)
    paths = (directory / "reference.h5ad", directory / "query.h5ad")
    if not overwrite:
        existing = [str(p) for p in paths if p.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} already exist; pass overwrite=True to replace them")
    for path, part, n in zip(paths, _PARTS, (n_reference, n_query)):
        options = _hard_options(part, overrides)
        n_genes = options.pop("n_genes")
        simulate_to_h5ad(path, n, n_genes, chunk_size=chunk_size, n_jobs=n_jobs, seed=seed, **options)
    return paths
