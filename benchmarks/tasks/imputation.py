"""Task 6: protein imputation of RNA-only query cells (paper: PBMC160k, 80 % bi-modal reference, 20 %
RNA-only query). On ``cbmc_citeseq`` (mouse spike-in cells dropped, ``Unknown`` unlabeled), a seeded
80 % RNA + protein reference / 20 % RNA-only query split. scConcerto imputes with ``map_query``
(mean normalized protein of the k nearest reference cells in its RNA-only space); every peer with an
embedding gets the same rule (k = 5 nearest reference cells, plain mean) in its own embedding.
Scored: Pearson r between imputed and measured protein per antibody (median, minimum), on the same
normalization (CLR, scConcerto's default) for every method.
"""

from __future__ import annotations

import logging
import time

import anndata as ad
import numpy as np

from scconcerto.data.setup import normalize_protein
from scconcerto.tools import impute_from_neighbors, knn

from ..peers import Split, make
from .base import Context, TaskResult
from .data import load, simulated

log = logging.getLogger("benchmarks")

#: Fraction of cells held out as the RNA-only query.
QUERY_FRACTION = 0.2
K = 5
PROTEIN_NORM = "clr"


def split_cells(adata: ad.AnnData, seed: int, fraction: float = QUERY_FRACTION) -> np.ndarray:
    """Seeded query mask (``True`` = query) of about ``fraction`` of the cells."""
    return np.random.default_rng(seed).random(adata.n_obs) < fraction


def pearson_per_column(imputed: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Pearson r of each column (antibody) of two ``(n_cells, n_proteins)`` arrays; NaN for a constant one."""
    a = imputed - imputed.mean(axis=0)
    b = measured - measured.mean(axis=0)
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=0) / denom, np.nan)


def cbmc(data_dir, skipped: list[str]) -> ad.AnnData | None:
    """``cbmc_citeseq`` without mouse cells (``Unknown`` = unlabeled for scConcerto and scANVI), raw ADT counts in
    ``obsm['protein']``; ``None`` (and a message in ``skipped``) when the file is absent."""
    adata = load(data_dir, "cbmc_citeseq", skipped)
    if adata is None:
        return None
    adata = adata[(adata.obs["cell_type"].astype(str) != "Mouse").to_numpy()].copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).astype("category")
    adata.obs["batch"] = "cbmc"
    adata.obsm = {"protein": np.asarray(adata.obsm["protein"], dtype=np.float32)}
    adata.uns = {"protein_names": [str(n) for n in adata.uns["protein_names"]]}
    return adata


def simulated_protein(seed: int = 0) -> ad.AnnData:
    """Smoke stand-in: the package simulator's cells with a protein panel that follows the cell type."""
    adata = simulated(n_cells=300, n_genes=150, seed=seed)
    rng = np.random.default_rng(seed)
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    n_types, n_proteins = int(codes.max()) + 1, 6
    means = rng.gamma(2.0, 20.0, size=(n_types, n_proteins))
    adata.obsm["protein"] = rng.poisson(means[codes]).astype(np.float32)
    adata.uns["protein_names"] = [f"prot_{j}" for j in range(n_proteins)]
    return adata


def _scconcerto(ctx: Context, ref: ad.AnnData, query: ad.AnnData) -> tuple[np.ndarray, list[str], dict]:
    """Train on RNA + protein, map the RNA-only query with ``map_query``; its ``protein_imputed``."""
    from scconcerto import Concerto

    ref = ref.copy()
    labels = ref.obs["cell_type"].astype(str)
    ref.obs["cell_type"] = labels.where(labels != "Unknown").astype("category")  # unlabeled, as the README says
    t0 = time.perf_counter()
    model = Concerto(ref, label_key="cell_type", protein_key="protein", protein_norm=PROTEIN_NORM, seed=ctx.seed)
    model.train(epochs=ctx.epochs, progress=False)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = model.map_query(query, k=K, batch_key=None, place=False, min_overlap=0.0)
    map_s = time.perf_counter() - t0
    names = [str(n) for n in query.uns["protein_imputed_names"]]
    return np.asarray(result.protein_imputed, dtype=np.float32), names, {
        "fit_s": round(fit_s, 2), "map_s": round(map_s, 2), "space": str(result.info.get("space", "")),
        "epochs": str(model.train_config.epochs)}


def _peer(ctx: Context, name: str, split: Split, ref_protein: np.ndarray) -> tuple[np.ndarray, dict] | None:
    """Fit a peer on the reference RNA, embed the query, average the k nearest reference cells' protein."""
    method = make(name, epochs=ctx.epochs, seed=ctx.seed)
    if not method.has_embedding:
        return None
    t0 = time.perf_counter()
    method.fit(split.reference, split.label_key, split.batch_key, split.is_counts)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    q_emb = method.map(split.query, split.batch_key).embedding
    ref_emb = method.embed_reference()
    neighbors = knn(np.ascontiguousarray(q_emb, dtype=np.float32), np.ascontiguousarray(ref_emb, dtype=np.float32),
                    k=K)
    imputed = impute_from_neighbors(neighbors, ref_protein)
    extra = {"fit_s": round(fit_s, 2), "map_s": round(time.perf_counter() - t0, 2)}
    if (epochs := method.epochs_text()) is not None:
        extra["epochs"] = epochs
    return np.asarray(imputed, dtype=np.float32), extra


def run(ctx: Context) -> TaskResult:
    """Impute the query's proteins with every method with an embedding; Pearson r per antibody."""
    result = TaskResult("imputation")
    adata = simulated_protein(ctx.seed) if ctx.smoke else cbmc(ctx.data_dir, result.skipped)
    if adata is None:
        return result
    dataset = "simulated" if ctx.smoke else "cbmc_citeseq"
    is_query = split_cells(adata, ctx.seed)
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    measured = normalize_protein(query.obsm["protein"], PROTEIN_NORM)
    ref_protein = normalize_protein(ref.obsm["protein"], PROTEIN_NORM)
    names = list(adata.uns["protein_names"])
    rna_query = ad.AnnData(query.X, obs=query.obs.copy(), var=query.var.copy())  # RNA only: no protein left
    split = Split("imputation", f"{dataset}:80/20", ref, rna_query)
    result.notes.append(f"{dataset}: {ref.n_obs} reference cells (RNA + protein), {query.n_obs} RNA-only query "
                        f"cells, {len(names)} antibodies, {PROTEIN_NORM.upper()} normalization, k = {K}")
    per_protein: dict[str, dict[str, float]] = {}
    for name in ctx.methods:
        log.info("[imputation] %s: %s", dataset, name)
        row = {"split": split.name, "method": name, "n_ref": ref.n_obs, "n_query": query.n_obs}
        try:
            if name == "scconcerto":
                imputed, got_names, extra = _scconcerto(ctx, ref, rna_query)
                order = [got_names.index(n) for n in names]
                imputed = imputed[:, order]
            else:
                out = _peer(ctx, name, split, ref_protein)
                if out is None:
                    continue
                imputed, extra = out
        except Exception as err:  # one failing method must not stop the others
            log.error("[imputation] %s failed: %s", name, err)
            row["error"] = f"{type(err).__name__}: {err}"
            result.rows.append(row)
            continue
        r = pearson_per_column(imputed, measured)
        per_protein[name] = {n: round(float(v), 4) for n, v in zip(names, r)}
        row.update({"median_r": float(np.nanmedian(r)), "min_r": float(np.nanmin(r)),
                    "worst_protein": names[int(np.nanargmin(r))], **extra, "pearson_r": per_protein[name]})
        log.info("  %s", {k: v for k, v in row.items() if k != "pearson_r"})
        result.rows.append(row)
    if per_protein:
        import pandas as pd

        from ..report import markdown

        table = pd.DataFrame(per_protein).rename_axis("antibody")
        result.extra_tables.append("Pearson r per antibody:\n\n" + markdown(table, index=True))
    return result
