import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scconcerto.data import prepare_cells, setup_reference


def test_batches_come_straight_from_csr_and_drop_stored_zeros(sim):
    setup = setup_reference(sim, batch_key="batch")
    prepared = prepare_cells(sim, setup)
    rows = np.array([5, 0, 17])
    b = prepared.cells.batch(rows)
    x = sim.X[rows]
    vocab_of = pd.Index(setup.genes).get_indexer(sim.var_names)  # genes without counts are not in it
    np.testing.assert_array_equal(b.student["rna"].lengths.numpy(), np.diff(x.indptr))
    np.testing.assert_array_equal(b.student["rna"].indices.numpy(), vocab_of[x.indices])
    # explicit zeros stored in the input never become batch entries
    with_zeros = sim.copy()
    coo = sim.X.tocoo()
    empty = np.flatnonzero(np.asarray(sim.X[rows[0]].todense()).ravel() == 0)[:5]
    row = np.concatenate([coo.row, np.full(5, rows[0])])
    col = np.concatenate([coo.col, empty])
    data = np.concatenate([coo.data, np.zeros(5, np.float32)])
    with_zeros.X = sp.coo_matrix((data, (row, col)), shape=sim.shape).tocsr()
    assert with_zeros.X.nnz == sim.X.nnz + 5
    b2 = prepare_cells(with_zeros, setup).cells.batch(rows)
    np.testing.assert_array_equal(b2.student["rna"].indices.numpy(), b.student["rna"].indices.numpy())


def test_query_columns_are_remapped_to_the_vocabulary(sim):
    setup = setup_reference(sim)
    perm = np.random.default_rng(0).permutation(sim.n_vars)
    shuffled = sim[:, perm].copy()
    a = prepare_cells(sim, setup).cells.batch(np.arange(10))
    b = prepare_cells(shuffled, setup).cells.batch(np.arange(10))
    for r in range(10):
        sa = slice(int(a.student["rna"].offsets[r]), int(a.student["rna"].offsets[r + 1]))
        sb = slice(int(b.student["rna"].offsets[r]), int(b.student["rna"].offsets[r + 1]))
        da = dict(zip(a.student["rna"].indices[sa].tolist(), a.student["rna"].values[sa].tolist()))
        db = dict(zip(b.student["rna"].indices[sb].tolist(), b.student["rna"].values[sb].tolist()))
        assert da == db


def test_hvg_are_chosen_on_the_reference_only(sim):
    setup = setup_reference(sim, batch_key="batch", hvg=50)
    assert len(setup.genes) == 50 and set(setup.genes) <= set(sim.var_names)
    markers = {g for genes in sim.uns["simulation"]["marker_genes"].values() for g in genes}
    assert len(markers & set(setup.genes)) > 25  # marker programs are the variable genes


def test_by_default_a_whole_transcriptome_keeps_its_most_variable_genes_and_a_gene_set_every_gene(sim):
    from scconcerto import Concerto
    from scconcerto._defaults import DEFAULT_HVG, WHOLE_TRANSCRIPTOME_GENES
    from scconcerto.datasets import simulate

    wide = simulate(300, WHOLE_TRANSCRIPTOME_GENES + 1, n_types=4, n_batches=2, seed=3)
    genes = setup_reference(wide, batch_key="batch").genes
    assert len(genes) == DEFAULT_HVG and set(genes) <= set(wide.var_names)
    markers = {g for gs in wide.uns["simulation"]["marker_genes"].values() for g in gs}
    assert len(markers - set(genes)) <= len(markers) // 10  # the marker programs survive the selection
    assert setup_reference(wide, batch_key="batch").hvg == DEFAULT_HVG  # the setup records what was kept
    detected = wide.var_names[np.asarray((wide.X > 0).sum(axis=0)).ravel() > 0].tolist()
    assert len(detected) < wide.n_vars  # 300 cells leave some of 5,001 simulated genes undetected
    assert setup_reference(wide, batch_key="batch", hvg=None).genes == detected  # every gene the cells express
    assert Concerto(wide, batch_key="batch").setup.genes == genes  # the model's default is the same
    # a gene set at the threshold, or a number not below the genes there are, keeps every gene in its order
    panel = wide[:, :WHOLE_TRANSCRIPTOME_GENES].copy()
    kept = setup_reference(panel, batch_key="batch")
    assert kept.genes == [g for g in detected if g in set(panel.var_names)] and kept.hvg is None
    sim_detected = sim.var_names[np.asarray((sim.X > 0).sum(axis=0)).ravel() > 0].tolist()
    assert setup_reference(sim, batch_key="batch", hvg=sim.n_vars).genes == sim_detected
    assert len(setup_reference(panel, batch_key="batch", hvg=DEFAULT_HVG).genes) == DEFAULT_HVG


@pytest.mark.parametrize("bad", [1, 0, 2.5, True, "2000", "some"])
def test_a_gene_count_that_is_not_a_whole_number_of_at_least_two_is_refused(sim, bad):
    from scconcerto._errors import InputError

    with pytest.raises(InputError, match="hvg must be a number of genes"):
        setup_reference(sim, hvg=bad)


def test_restricted_cells_read_only_the_kept_genes(sim):
    from scconcerto.data.cells import restrict_to_genes

    setup = setup_reference(sim, batch_key="batch")
    cells = prepare_cells(sim, setup).cells
    keep = np.random.default_rng(0).random(len(setup.genes)) < 0.5
    rows = np.arange(40)
    before = cells.rna_rows(rows)
    after = restrict_to_genes(cells, keep).rna_rows(rows)
    kept = keep[before[0]]
    np.testing.assert_array_equal(after[0], before[0][kept])
    np.testing.assert_array_equal(after[1], before[1][kept])  # values (normalized by all genes) unchanged
    row_of = np.repeat(np.arange(len(rows)), np.diff(before[2]))
    np.testing.assert_array_equal(np.diff(after[2]), np.bincount(row_of[kept], minlength=len(rows)))
    assert cells.rna_rows(rows)[0].size == before[0].size  # the input cells are not changed
    with pytest.raises(ValueError, match="beyond the mask"):
        restrict_to_genes(cells, keep[:10])
