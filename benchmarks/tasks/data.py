"""Real data sets and the reference/query splits built from them (always on shared genes), plus the
simulated stand-ins of the smoke run. A data set that is absent is skipped with a message."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import anndata as ad

from ..peers import Split

log = logging.getLogger("benchmarks")

FILES = {
    "symphony_pbmc_3tech": "symphony_pbmc_3tech/symphony_pbmc_3tech.h5ad",
    "scclassify_pancreas_wang_xin": "scclassify_pancreas_wang_xin/scclassify_pancreas_wang_xin.h5ad",
    "pbmcsca_dropseq_indrops": "pbmcsca_ding2020_subsets/pbmcsca_dropseq_indrops.h5ad",
    "pbmcsca_celseq2": "pbmcsca_ding2020_subsets/pbmcsca_celseq2.h5ad",
    "kang_ifnb_pbmc_scgen": "kang_ifnb_pbmc_scgen/kang_ifnb_pbmc_scgen.h5ad",
    "cellbench_5cl_celseq2_3plates": "cellbench_5cl_celseq2_3plates/cellbench_5cl_celseq2_3plates.h5ad",
    "cbmc_citeseq": "cbmc_citeseq/cbmc_citeseq.h5ad",
    "scmerge_mesc": "scmerge_mesc/scmerge_mesc.h5ad",
}
#: Data sets whose ``X`` is log-normalized rather than counts.
LOGNORM = {"scclassify_pancreas_wang_xin"}

#: Development data: every setting and constant of the method is chosen on these (and on adversarial
#: variants built from them). PBMC across chemistries and a perturbed condition, clean cell lines,
#: CITE-seq, and the demo's PBMC 68k.
DEVELOPMENT = frozenset({"symphony_pbmc_3tech", "kang_ifnb_pbmc_scgen", "cellbench_5cl_celseq2_3plates",
                         "cbmc_citeseq", "scanpy_pbmc68k_reduced", "pbmc3k_raw_desc", "citefuse_eccite_pbmc"})
#: Test data: only reported, never tuned on. Cross-technology pancreas (already log-normalized),
#: cross-protocol PBMC with a small gene overlap, and a mouse two-batch set.
TEST = frozenset({"scclassify_pancreas_wang_xin", "pbmcsca_dropseq_indrops", "pbmcsca_celseq2", "scmerge_mesc"})


def role(dataset: str) -> str:
    """``"development"`` or ``"test"`` for a data set (or a split named ``dataset:...``)."""
    name = dataset.split(":", 1)[0]
    if name in DEVELOPMENT or name.startswith(("symphony", "kang", "cellbench", "cbmc")):
        return "development"
    if name in TEST or name.startswith(("scclassify_pancreas", "pbmcsca", "scmerge")):
        return "test"
    return "development"  # simulated data


def load(data_dir: Path | None, name: str, skipped: list[str]) -> ad.AnnData | None:
    """Read one data set (read-only; cleaned as its README says), or record why it is skipped."""
    from scconcerto._io import read_h5ad

    path = None if data_dir is None else Path(data_dir) / FILES[name]
    if path is None or not path.exists():
        msg = f"{name}: skipped, {path or 'no --data-dir'} not found"
        log.warning(msg)
        skipped.append(msg)
        return None
    adata = read_h5ad(path)
    adata.obs_names_make_unique()
    if name == "cellbench_5cl_celseq2_3plates":
        adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    adata.layers.clear()
    adata.obs = adata.obs[[c for c in ("cell_type", "batch") if c in adata.obs]].copy()
    for col in adata.obs:
        adata.obs[col] = adata.obs[col].astype(str).astype("category")
    return adata


def on_shared_genes(task: str, name: str, ref: ad.AnnData, query: ad.AnnData, is_counts: bool) -> Split:
    """A split restricted to the genes the reference and the query share (same genes for every method)."""
    genes = ref.var_names.intersection(query.var_names)
    notes = [] if len(genes) == ref.n_vars else [f"{len(genes)} shared genes of {ref.n_vars} reference genes"]
    return Split(task, name, ref[:, genes].copy(), query[:, genes].copy(), is_counts=is_counts, notes=notes)


def leave_one_batch_out(task: str, dataset: str, adata: ad.AnnData, is_counts: bool) -> Iterator[Split]:
    """One split per batch: that batch is the query, the others the reference."""
    for held in sorted(adata.obs["batch"].unique()):
        is_query = (adata.obs["batch"] == held).to_numpy()
        yield on_shared_genes(task, f"{dataset}:query={held}", adata[~is_query], adata[is_query], is_counts)


def label_transfer_splits(data_dir: Path | None, skipped: list[str], smoke: bool = False) -> Iterator[Split]:
    """The issue's mapping splits across chemistries, technologies, protocols, conditions and plates."""
    task = "label_transfer"
    if smoke:
        yield from leave_one_batch_out(task, "simulated", simulated(), True)
        return
    if (a := load(data_dir, "symphony_pbmc_3tech", skipped)) is not None:
        yield from leave_one_batch_out(task, "symphony_pbmc_3tech", a, True)
    if (a := load(data_dir, "scclassify_pancreas_wang_xin", skipped)) is not None:
        yield from leave_one_batch_out(task, "scclassify_pancreas_wang_xin", a, False)
    ref, query = load(data_dir, "pbmcsca_dropseq_indrops", skipped), load(data_dir, "pbmcsca_celseq2", skipped)
    if ref is not None and query is not None:
        yield on_shared_genes(task, "pbmcsca:dropseq+indrops->celseq2", ref, query, True)
    if (a := load(data_dir, "kang_ifnb_pbmc_scgen", skipped)) is not None:
        is_stim = (a.obs["batch"] == "stimulated").to_numpy()
        yield on_shared_genes(task, "kang_ifnb:control->stimulated", a[~is_stim], a[is_stim], True)
    if (a := load(data_dir, "cellbench_5cl_celseq2_3plates", skipped)) is not None:
        yield from leave_one_batch_out(task, "cellbench_5cl", a, True)


def integration_datasets(data_dir: Path | None, skipped: list[str], smoke: bool = False
                         ) -> Iterator[tuple[str, ad.AnnData, bool]]:
    """Multi-batch labelled data sets for integration and clustering: ``(name, adata, is_counts)``."""
    if smoke:
        yield "simulated", simulated(), True
        return
    for name in ("symphony_pbmc_3tech", "scclassify_pancreas_wang_xin", "kang_ifnb_pbmc_scgen",
                 "cellbench_5cl_celseq2_3plates"):
        if (a := load(data_dir, name, skipped)) is not None:
            yield name, a, name not in LOGNORM


def simulated(n_cells: int = 360, n_genes: int = 200, seed: int = 0) -> ad.AnnData:
    """The package simulator: 3 types x 3 batches, with ``cell_type`` / ``batch`` columns."""
    from scconcerto.datasets import simulate

    adata = simulate(n_cells=n_cells, n_genes=n_genes, n_types=3, n_batches=3, seed=seed, markers_per_type=15)
    rename = {}
    for want, options in (("cell_type", ("cell_type", "type", "label")), ("batch", ("batch",))):
        have = next((c for c in options if c in adata.obs), None)
        if have is None:
            raise KeyError(f"simulate() obs has none of {options}: {list(adata.obs)}")
        rename[have] = want
    adata.obs = adata.obs.rename(columns=rename)[["cell_type", "batch"]]
    for col in adata.obs:
        adata.obs[col] = adata.obs[col].astype(str).astype("category")
    return adata


def drop_type(split: Split, cell_type: str) -> Split:
    """The split with ``cell_type`` removed from the reference (the query keeps it, as unseen)."""
    keep = (split.reference.obs[split.label_key].astype(str) != cell_type).to_numpy()
    return Split("unseen_type", f"{split.name} without {cell_type}", split.reference[keep].copy(), split.query,
                 split.label_key, split.batch_key, split.is_counts, split.notes)


def first(iterator) -> object | None:
    """The first item or ``None``."""
    return next(iter(iterator), None)


__all__ = ["DEVELOPMENT", "FILES", "TEST", "role", "drop_type", "integration_datasets", "label_transfer_splits", "load", "simulated", "first"]
