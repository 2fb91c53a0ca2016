"""The hard simulation: subtypes told apart by a few genes, gene-specific batch effects, a held-out batch."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from scconcerto.datasets import HARD_SIMULATION, simulate, simulate_hard, write_hard_simulation

GENES = 800  # fewer genes than the benchmark's 3,000: the same programs, a faster test


@pytest.fixture(scope="module")
def reference() -> ad.AnnData:
    return simulate_hard(3000, seed=4, n_genes=GENES)


@pytest.fixture(scope="module")
def query() -> ad.AnnData:
    return simulate_hard(1500, "query", seed=4, n_genes=GENES)


def _type_means(adata: ad.AnnData, cell_type: str, batch: str | None = None) -> np.ndarray:
    """Mean counts per 10,000 of the cells of one type (and batch): the per-gene profile."""
    keep = (adata.obs["cell_type"] == cell_type).to_numpy()
    if batch is not None:
        keep &= (adata.obs["batch"] == batch).to_numpy()
    X = adata.X[keep]
    scaled = X.multiply(1e4 / np.asarray(X.sum(axis=1))).tocsr()
    return np.asarray(scaled.mean(axis=0)).ravel()


def test_same_seed_same_cells_and_parts_share_one_world(reference, query):
    again = simulate_hard(3000, seed=4, n_genes=GENES, chunk_size=700)
    assert (again.X != reference.X).nnz == 0
    assert (simulate_hard(3000, seed=5, n_genes=GENES).X != reference.X).nnz > 0
    assert list(reference.obs["batch"].cat.categories) == ["batch_0", "batch_1", "batch_2"]
    assert list(query.obs["batch"].cat.categories) == ["batch_3"]  # no empty categories
    assert not set(reference.obs_names) & set(query.obs_names)
    for key in ("marker_genes", "major_groups", "batch_depth_factors"):
        assert reference.uns["simulation"][key] == query.uns["simulation"][key]
    # the query's first cells are not the reference's first cells with another batch: own noise
    assert not np.array_equal(reference.X[:50].toarray() > 0, query.X[:50].toarray() > 0)


def test_twelve_types_in_four_lineages_every_type_in_every_batch(reference, query):
    sim = reference.uns["simulation"]
    assert len(sim["major_groups"]) == 4 and all(len(v) == 3 for v in sim["major_groups"].values())
    for adata in (reference, query):
        counts = adata.obs.groupby(["batch", "cell_type"], observed=False).size().unstack()
        assert counts.shape[1] == 12 and (counts.loc[adata.obs["batch"].unique()] > 0).all().all()


def test_sibling_subtypes_differ_in_a_handful_of_genes_lineages_in_many(reference):
    """Two subtypes of a lineage differ clearly (yet modestly: under 3x) in their own few marker genes
    and hardly in the others (fewer than 10 % of the expressed genes beyond 1.5x); two lineages differ
    beyond 1.5x in more than 20 % of them."""
    sim = reference.uns["simulation"]
    genes = reference.var_names.to_numpy()

    def log_ratios(a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        ma, mb = _type_means(reference, a), _type_means(reference, b)
        expressed = (ma > 5) & (mb > 5)  # counts per 10k: high enough for a stable mean
        return np.abs(np.log(ma[expressed] / mb[expressed])), genes[expressed]

    for members in sim["major_groups"].values():
        a, b = members[:2]
        ratio, expressed = log_ratios(a, b)
        own = np.isin(expressed, [*sim["marker_genes"][a], *sim["marker_genes"][b],
                                  *sim["downregulated_genes"][a], *sim["downregulated_genes"][b]])
        assert 1 <= own.sum() <= 2 * (HARD_SIMULATION["markers_per_type"] + 1)
        assert np.log(3.0) > np.median(ratio[own]) > 3 * np.median(ratio[~own])
        assert np.mean(ratio[~own] > np.log(1.5)) < 0.1
    lineages = list(sim["major_groups"].values())
    ratio, _ = log_ratios(lineages[0][0], lineages[1][0])
    assert np.mean(ratio > np.log(1.5)) > 0.2


def test_batch_effects_are_gene_specific_and_depths_shift(reference, query):
    """The held-out batch scales each gene by its own factor (not one factor for all genes): its log
    ratios to a reference batch, for the same type, spread far more than two halves of one batch do."""
    cell_type = reference.obs["cell_type"].value_counts().index[0]
    ref0 = _type_means(reference, cell_type, "batch_0")
    held = _type_means(query, cell_type)
    in_type = np.flatnonzero((reference.obs["cell_type"] == cell_type) & (reference.obs["batch"] == "batch_0"))
    half = reference[in_type[: len(in_type) // 2]]
    half_means = _type_means(half, cell_type)
    expressed = (ref0 > 20) & (held > 20) & (half_means > 20)
    across = np.log(held[expressed] / ref0[expressed])
    within = np.log(half_means[expressed] / ref0[expressed])
    assert np.std(across) > 0.3 > 2 * np.std(within)
    depth = reference.uns["simulation"]["batch_depth_factors"]
    assert max(depth.values()) / min(depth.values()) > 2.5
    totals = {b: float(np.median(np.asarray(a.X[(a.obs["batch"] == b).to_numpy()].sum(axis=1))))
              for a in (reference, query) for b in a.obs["batch"].unique()}
    order = sorted(depth, key=depth.get)
    assert [totals[b] for b in order] == sorted(totals.values())  # library sizes follow the batch depths


def test_writer_streams_the_same_cells_and_does_not_clobber(tmp_path, reference, query):
    ref_path, query_path = write_hard_simulation(tmp_path, 3000, 1500, seed=4, chunk_size=512, n_genes=GENES)
    on_disk_ref, on_disk_query = ad.read_h5ad(ref_path), ad.read_h5ad(query_path)
    assert (on_disk_ref.X != reference.X).nnz == 0 and (on_disk_query.X != query.X).nnz == 0
    assert on_disk_ref.obs.equals(reference.obs) and on_disk_query.obs.equals(query.obs)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_hard_simulation(tmp_path, 100, 100, seed=4, n_genes=GENES)
    write_hard_simulation(tmp_path, 200, 100, seed=4, n_genes=GENES, overwrite=True)
    assert ad.read_h5ad(ref_path, backed="r").n_obs == 200


def test_batch_subsets_keep_the_default_world_and_reject_bad_batches():
    whole = simulate(400, 300, n_types=3, n_batches=3, seed=2)
    part = simulate(200, 300, n_types=3, n_batches=3, seed=2, batches=[2])
    assert whole.uns["simulation"]["marker_genes"] == part.uns["simulation"]["marker_genes"]
    assert list(part.obs["batch"].unique()) == ["batch_2"]
    with pytest.raises(ValueError, match="batches"):
        simulate(200, 300, n_types=3, n_batches=3, batches=[3])
    with pytest.raises(ValueError, match="marker_fold_change"):
        simulate(200, 300, n_types=3, marker_fold_change=(0.5, 2.0))
    with pytest.raises(TypeError, match="batches"):
        simulate_hard(200, batches=[0])
