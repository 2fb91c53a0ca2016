import numpy as np
import pandas as pd
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
