"""Donors of one technology, built from development data: the situation where per-source normalization
removes biology (sources that differ in composition, not in technology).

* :func:`donors`: the cells of one technology assigned to four donors, each type shared among them by
  proportions drawn from a symmetric Dirichlet(0.5), so that one donor may hold most of a type;
* :func:`technical_shift`: the same donors with a gene-wise technical effect (binomial thinning whose
  capture probability varies by donor and gene).

Names ``<data set>:donors`` and ``<data set>:donors-shift`` (:func:`load_donors`); used by the ablations
(``benchmarks/ABLATIONS_SOURCE_NORM.md``) and the unsupervised benchmark task.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .data import load

#: Single-technology development data split into donors (:func:`donors`): CITE-seq cord blood, the control
#: condition of Kang, the 10x 3' v2 cells of the PBMC chemistries.
DONORS = ("cbmc_citeseq:donors", "kang_ifnb_pbmc_scgen:donors", "symphony_pbmc_3tech:donors")
#: One condition or chemistry of a multi-batch data set, for :data:`DONORS`.
DONOR_BASE = {"kang_ifnb_pbmc_scgen": "control", "symphony_pbmc_3tech": "3pv2"}


def donors(adata: ad.AnnData, n_donors: int = 4, concentration: float = 0.5, max_cells: int = 2400,
           seed: int = 0) -> ad.AnnData:
    """Cells of one technology assigned to ``n_donors`` donors (``obs['batch']``), each type's cells shared
    among the donors by proportions drawn from a symmetric Dirichlet(``concentration``): compositions as
    different as real donors' can be (one donor holding most of a type), without a technical effect; then a
    seeded sample of at most ``max_cells`` cells."""
    rng = np.random.default_rng(seed)
    types = adata.obs["cell_type"].astype(str).to_numpy()
    donor = np.zeros(adata.n_obs, dtype=np.int64)
    for t in np.unique(types):
        rows = np.flatnonzero(types == t)
        donor[rows] = rng.choice(n_donors, size=rows.size, p=rng.dirichlet(np.full(n_donors, concentration)))
    keep = np.sort(rng.choice(adata.n_obs, min(max_cells, adata.n_obs), replace=False))
    out = adata[keep].copy()
    out.obs["batch"] = pd.Categorical([f"donor{d}" for d in donor[keep]])
    return out


def technical_shift(adata: ad.AnnData, sigma: float = 1.0, keep: float = 0.6, seed: int = 0) -> ad.AnnData:
    """Counts thinned per batch and gene (binomial, with a capture probability whose logit is
    ``logit(keep) + sigma * N(0, 1)`` per batch and gene): a gene-wise technical effect between batches."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed + 100)
    x = sp.csr_matrix(adata.X, dtype=np.float64)
    batches = adata.obs["batch"].astype(str).to_numpy()
    capture = np.zeros(x.shape)
    logit = np.log(keep / (1 - keep))
    for b in np.unique(batches):
        capture[batches == b] = 1 / (1 + np.exp(-(logit + sigma * rng.standard_normal(adata.n_vars))))
    coo = x.tocoo()
    thinned = rng.binomial(np.rint(coo.data).astype(np.int64), capture[coo.row, coo.col]).astype(np.float32)
    out = adata.copy()
    out.X = sp.csr_matrix((thinned, (coo.row, coo.col)), shape=x.shape)
    out.X.eliminate_zeros()
    return out


def one_technology(adata: ad.AnnData, base: str) -> ad.AnnData:
    """The cells of one condition / chemistry (:data:`DONOR_BASE`); CITE-seq without its mouse spike-ins and
    unlabeled cells."""
    if base in DONOR_BASE:
        return adata[adata.obs["batch"].astype(str).to_numpy() == DONOR_BASE[base]].copy()
    types = adata.obs["cell_type"].astype(str)
    return adata[~types.isin(["Mouse", "Unknown"]).to_numpy()].copy()


def load_donors(data_dir: Path | None, name: str, skipped: list[str]) -> ad.AnnData | None:
    """The donor variant ``name`` (``<data set>:donors`` or ``<data set>:donors-shift``), or ``None`` (recorded
    in ``skipped``) when its data set is absent."""
    base, _, variant = name.partition(":")
    if variant not in ("donors", "donors-shift"):
        raise ValueError(f"{name}: not a donor variant (<data set>:donors or <data set>:donors-shift)")
    adata = load(data_dir, base, skipped)
    if adata is None:
        return None
    out = donors(one_technology(adata, base))
    return technical_shift(out) if variant == "donors-shift" else out
