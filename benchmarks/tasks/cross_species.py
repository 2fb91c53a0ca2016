"""Task: cross-species label transfer, human reference -> mouse query, on a SIMULATED mouse query.

No matching human/mouse pair with labels is available offline (the only mouse set, ``scmerge_mesc``,
is embryonic stem cells in culture conditions, matching no human tissue here), so the mouse query is
simulated from a human one (:func:`as_mouse`):

1. genes renamed to their mouse 1:1 ortholog with the table scConcerto ships
   (:func:`scconcerto.data.genes.ortholog_table`); genes without one are dropped (ribosomal,
   HLA, immunoglobulin and other gene families: about a third of PBMC genes);
2. each remaining gene's expression multiplied by a species factor ``exp(N(0, SPECIES_SD^2))``
   drawn once per gene (seed :data:`SIMULATION_SEED`, the same for every run), and counts redrawn
   as ``Poisson(count * factor)``: orthologs expressed at other levels in the other species.

Log-normalized data (the pancreas) are turned into pseudo-counts first (``peers.base.counts``),
reference included. Every method then sees the mouse query with its genes translated back to the
reference's names by scConcerto's harmonisation (``GeneVocabulary.align(query_species="mouse")``,
the path ``map_query(query_species="mouse")`` takes), on the genes both share.

Splits: symphony_pbmc_3tech 3' (v1 + v2) -> 5' as mouse (development), pancreas Wang -> Xin as mouse
(test: a human-pancreas reference and a mouse-pancreas query), Kang control -> IFN-b stimulated as mouse
(development).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..peers import Split
from ..peers.base import counts
from .base import Context, TaskResult, annotation_scores, for_each_method, seen_mask
from .data import load, on_shared_genes, simulated

#: Standard deviation of the log species factor of each gene.
SPECIES_SD = 0.5
#: Seed of the simulation (fixed: every run and method sees the same mouse query).
SIMULATION_SEED = 0


def as_mouse(adata: ad.AnnData, sd: float = SPECIES_SD, seed: int = SIMULATION_SEED) -> ad.AnnData:
    """A simulated mouse version of a human counts AnnData (see the module docstring)."""
    from scconcerto.data.genes import ortholog_table

    to_mouse = ortholog_table().set_index("human")["mouse"]
    mouse = pd.Series(adata.var_names.astype(str)).map(to_mouse)
    keep = mouse.notna().to_numpy()
    x = sp.csr_matrix(adata.X[:, keep], dtype=np.float32, copy=True)
    rng = np.random.default_rng(seed)
    factor = np.exp(rng.normal(0.0, sd, keep.sum())).astype(np.float64)
    x.data = rng.poisson(x.data * factor[x.indices]).astype(np.float32)
    x.eliminate_zeros()
    out = ad.AnnData(x, obs=adata.obs.copy(), var=pd.DataFrame(index=mouse[keep].to_numpy()))
    out.uns["simulation"] = (f"human genes renamed to mouse 1:1 orthologs ({keep.sum()} of {adata.n_vars} kept), "
                             f"per-gene factor exp(N(0, {sd}^2)), Poisson counts, seed {seed}")
    return out


def translated(reference: ad.AnnData, mouse: ad.AnnData) -> ad.AnnData:
    """The mouse query with its genes renamed to the reference's through scConcerto's harmonisation."""
    from scconcerto.data import GeneVocabulary

    col = GeneVocabulary(reference.var_names).align(mouse.var_names, min_overlap=0.0,
                                                    query_species="mouse").column_to_vocab
    out = mouse[:, col >= 0].copy()
    out.var_names = reference.var_names[col[col >= 0]]
    return out


def human_named_simulation() -> ad.AnnData:
    """The smoke run's simulated data with real human symbols that have a mouse 1:1 ortholog."""
    from scconcerto.data.genes import ortholog_table

    adata = simulated()
    orth = ortholog_table()
    adata.var_names = orth["human"].to_numpy()[:adata.n_vars]
    return adata


def split(task: str, name: str, reference: ad.AnnData, query: ad.AnnData) -> Split:
    """Human ``reference`` -> ``query`` simulated as mouse, on the genes the two share after translation."""
    mouse = as_mouse(query)
    out = on_shared_genes(task, name, reference, translated(reference, mouse), is_counts=True)
    out.notes.append(f"{name}: query {mouse.uns['simulation']}; {out.reference.n_vars} genes shared after "
                     "translating back")
    return out


def cross_species_splits(data_dir: Path | None, skipped: list[str], smoke: bool = False) -> Iterator[Split]:
    """Human reference -> simulated mouse query splits (see the module docstring)."""
    task = "cross_species"
    if smoke:
        a = human_named_simulation()
        is_query = (a.obs["batch"] == "batch_0").to_numpy()
        yield split(task, "simulated:batch_0 as mouse", a[~is_query].copy(), a[is_query].copy())
        return
    if (a := load(data_dir, "symphony_pbmc_3tech", skipped)) is not None:
        is_query = (a.obs["batch"] == "5p").to_numpy()
        yield split(task, "symphony_pbmc_3tech:3p->5p as mouse", a[~is_query].copy(), a[is_query].copy())
    if (a := load(data_dir, "scclassify_pancreas_wang_xin", skipped)) is not None:
        a = counts(a, is_counts=False)  # log-normalized: pseudo-counts for the Poisson redraw, reference too
        is_query = (a.obs["batch"] == "xin").to_numpy()
        yield split(task, "scclassify_pancreas_wang_xin:wang->xin as mouse", a[~is_query].copy(),
                    a[is_query].copy())
    if (a := load(data_dir, "kang_ifnb_pbmc_scgen", skipped)) is not None:
        is_query = (a.obs["batch"] == "stimulated").to_numpy()
        yield split(task, "kang_ifnb:control->stimulated as mouse", a[~is_query].copy(), a[is_query].copy())


def run(ctx: Context) -> TaskResult:
    """Fit every method on each human reference and score its predictions for the simulated mouse query."""
    result = TaskResult("cross_species")
    result.notes.append("SIMULATED mouse queries (no matching human/mouse labelled pair offline): human genes "
                        "renamed to mouse 1:1 orthologs, the others dropped, per-gene species factor "
                        f"exp(N(0, {SPECIES_SD}^2)) with Poisson counts (benchmarks/tasks/cross_species.py).")
    for s in cross_species_splits(ctx.data_dir, result.skipped, ctx.smoke):
        seen = seen_mask(s)
        truth = s.query.obs[s.label_key].astype(str).to_numpy()

        def score(name, fitted):
            return annotation_scores(truth, fitted.mapping, seen)

        result.rows.extend(for_each_method(ctx, s, score))
        result.notes.extend(s.notes)
    return result
