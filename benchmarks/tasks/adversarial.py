"""Adversarial variants of a development split, each a way a user's data differs from the reference's:

* the reference log-normalized (natural log, or log2) while the query holds raw counts, and the reverse;
* the reference normalized by another pipeline (log2 of counts per million) while the query holds raw counts;
* the query at a quarter of its sequencing depth (each count thinned binomially);
* the reference log-normalized and measured on a quarter of the genes (the rest zero in every reference cell,
  as an outer join of gene sets leaves them), the query raw counts of all genes;
* the reference log-normalized, the query raw counts at an eighth of its depth (a shallow technology mapped
  onto a deeper, already normalized atlas);
* one reference source cut to a quarter of its genes (the rest zero) and holding a label of at most 5 cells;
* a query with a type the reference lacks;
* a query ten times richer in one type than the reference.

Built from ``symphony_pbmc_3tech`` (chemistry ``5p`` as the query), a development data set, so that nothing
here is tuned on test data. Used by the do-no-harm tests and the ``adversarial`` benchmark task.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..peers import Split
from .data import drop_type, load, on_shared_genes

#: The split the variants are built from, its query chemistry, and the types they move.
BASE, QUERY = "symphony_pbmc_3tech", "5p"
RARE_TYPE, RICH_TYPE, MISSING_TYPE = "DC", "B", "NK"


def log_normalized(X: sp.spmatrix, base: float = np.e) -> sp.csr_matrix:
    """``log_base(1 + counts * 1e4 / total)`` per cell, on a sparse copy."""
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    total = np.asarray(X.sum(axis=1)).ravel()
    X = sp.diags((1e4 / np.where(total > 0, total, 1.0)).astype(np.float32)) @ X
    X.data = (np.log1p(X.data) / np.log(base)).astype(np.float32)
    return X.tocsr()


def log2_cpm(X: sp.spmatrix) -> sp.csr_matrix:
    """``log2(1 + counts per million)`` per cell, on a sparse copy."""
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    total = np.asarray(X.sum(axis=1)).ravel()
    X = sp.diags((1e6 / np.where(total > 0, total, 1.0)).astype(np.float32)) @ X
    X.data = np.log2(1 + X.data).astype(np.float32)
    return X.tocsr()


def thinned(X: sp.spmatrix, fraction: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Counts kept each with probability ``fraction`` (binomial thinning: a shallower sequencing of the same
    cells), on a sparse copy."""
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    X.data = rng.binomial(np.rint(X.data).astype(np.int64), fraction).astype(np.float32)
    X.eliminate_zeros()
    return X


def base_split(data_dir: Path | None, skipped: list[str]) -> Split | None:
    adata = load(data_dir, BASE, skipped)
    if adata is None:
        return None
    is_query = (adata.obs["batch"] == QUERY).to_numpy()
    return on_shared_genes("adversarial", f"{BASE}:query={QUERY}", adata[~is_query], adata[is_query], True)


def variants(data_dir: Path | None, skipped: list[str], seed: int = 0) -> Iterator[Split]:
    """The variants of the base split (see the module docstring); seeded where cells or genes are drawn."""
    split = base_split(data_dir, skipped)
    if split is None:
        return
    rng = np.random.default_rng(seed)
    for name, base, which in (("reference ln-normalized, query counts", np.e, "reference"),
                              ("reference log2-normalized, query counts", 2.0, "reference"),
                              ("reference counts, query ln-normalized", np.e, "query")):
        ref, query = split.reference.copy(), split.query.copy()
        target = ref if which == "reference" else query
        target.X = log_normalized(target.X, base)
        yield Split("adversarial", f"{split.name} {name}", ref, query, is_counts=which != "reference",
                    notes=[f"{which} log-normalized (base {base:.3g}); the other holds counts"])

    ref = split.reference.copy()
    source = sorted(ref.obs["batch"].unique())[-1]
    in_source = (ref.obs["batch"] == source).to_numpy()
    kept_genes = np.zeros(ref.n_vars, dtype=bool)
    kept_genes[rng.choice(ref.n_vars, ref.n_vars // 4, replace=False)] = True
    X = sp.csr_matrix(ref.X, dtype=np.float32, copy=True)
    X = (X - sp.diags(in_source.astype(np.float32)) @ X @ sp.diags((~kept_genes).astype(np.float32))).tocsr()
    X.eliminate_zeros()
    ref.X = X
    is_rare = (ref.obs["cell_type"] == RARE_TYPE).to_numpy()
    keep = ~is_rare
    keep[np.flatnonzero(is_rare & in_source)[:5]] = True
    yield Split("adversarial", f"{split.name} source {source} cut to 1/4 of its genes, {RARE_TYPE} 5 cells",
                ref[keep].copy(), split.query.copy(), is_counts=True)

    yield drop_type(Split("adversarial", f"{split.name} query with a type the reference lacks",
                          split.reference, split.query, is_counts=True), MISSING_TYPE)

    ref = split.reference.copy()
    is_rich = (ref.obs["cell_type"] == RICH_TYPE).to_numpy()
    drop = rng.choice(np.flatnonzero(is_rich), int(round(0.9 * is_rich.sum())), replace=False)
    keep = np.ones(ref.n_obs, dtype=bool)
    keep[drop] = False
    yield Split("adversarial", f"{split.name} query 10x richer in {RICH_TYPE}", ref[keep].copy(), split.query.copy(),
                is_counts=True)

    ref = split.reference.copy()
    ref.X = log2_cpm(ref.X)
    yield Split("adversarial", f"{split.name} reference log2 counts per million, query counts", ref,
                split.query.copy(), is_counts=False, notes=["reference log2(1 + CPM); the query holds counts"])

    query = split.query.copy()
    query.X = thinned(query.X, 0.25, rng)
    yield Split("adversarial", f"{split.name} query at a quarter of its depth", split.reference.copy(), query,
                is_counts=True)

    ref = split.reference.copy()
    panel = np.zeros(ref.n_vars, dtype=bool)
    panel[rng.choice(ref.n_vars, ref.n_vars // 4, replace=False)] = True
    ref.X = (log_normalized(ref.X) @ sp.diags(panel.astype(np.float32))).tocsr()
    ref.X.eliminate_zeros()
    yield Split("adversarial", f"{split.name} reference ln-normalized on a quarter of the genes, query counts of all",
                ref, split.query.copy(), is_counts=False, notes=["reference log-normalized, 3/4 of its genes zero"])

    ref = split.reference.copy()
    ref.X = log_normalized(ref.X)
    query = split.query.copy()
    query.X = thinned(query.X, 0.125, rng)
    yield Split("adversarial", f"{split.name} reference ln-normalized, query counts at an eighth of its depth", ref,
                query, is_counts=False, notes=["reference log-normalized; the query's counts thinned to 1/8"])
