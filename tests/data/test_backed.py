"""Out-of-core data: row reads from disk, streamed training batches, bounded memory, backed training/embedding."""

import tracemalloc

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from scconcerto.data import prepare_cells, setup_reference
from scconcerto.data.backed import BackedCSR, prefetch, read_backed, take_rows, write_rows_h5ad
from scconcerto.data.sampling import chunk_windows, count_source_batches, window_rows
from scconcerto.data.streaming import StreamingBatches
from scconcerto.datasets import simulate_to_h5ad


@pytest.fixture(scope="module")
def sim_file(sim, tmp_path_factory):
    path = tmp_path_factory.mktemp("backed") / "sim.h5ad"
    sim.write_h5ad(path)
    return path


def test_row_reads_equal_the_in_memory_matrix(sim, sim_file):
    X = BackedCSR(read_backed(sim_file).X)
    assert X.shape == sim.shape and X.nnz == sim.X.nnz
    rng = np.random.default_rng(0)
    for rows in (np.arange(100, 180), rng.permutation(sim.n_obs)[:57], np.array([5, 5, 599, 0, 3, 4])):
        got = X[rows]
        assert (got != sim.X[rows]).nnz == 0
    assert (X[10:20] != sim.X[10:20]).nnz == 0
    np.testing.assert_allclose(X.sum(axis=1).ravel(), np.asarray(sim.X.sum(axis=1)).ravel(), rtol=1e-6)


def test_a_dense_selection_is_read_in_bounded_runs(sim, sim_file, monkeypatch):
    """Every other row of the file is one run by the gap rule; it is read block by block instead, so no read
    spans more than ``RUN_MAX_ROWS`` rows (memory follows the selection, not the file)."""
    import scconcerto.data.backed as backed

    monkeypatch.setattr(backed, "RUN_MAX_ROWS", 50, raising=False)
    X = BackedCSR(read_backed(sim_file).X)
    spans = []
    read = X.read_rows
    monkeypatch.setattr(X, "read_rows", lambda start, stop: spans.append(stop - start) or read(start, stop))
    rows = np.random.default_rng(1).permutation(np.arange(0, sim.n_obs, 2))
    assert (X[rows] != sim.X[rows]).nnz == 0
    assert max(spans) <= 50 and sum(spans) < sim.n_obs


def test_zarr_store_is_read_without_loading_x(sim, tmp_path):
    sim.write_zarr(tmp_path / "sim.zarr")
    backed = read_backed(tmp_path / "sim.zarr")
    setup = setup_reference(backed, batch_key="batch")
    cells = prepare_cells(backed, setup).cells
    assert isinstance(cells.X, BackedCSR)
    rows = np.array([3, 1, 400])
    assert (cells.X[rows] != sim.X[rows]).nnz == 0


def test_take_rows_gathers_segments_in_the_given_order():
    m = sp.random(30, 12, density=0.3, format="csr", random_state=0, dtype=np.float32)
    rows = np.array([7, 0, 7, 29])
    d, i, p = take_rows(m.indptr.astype(np.int64), m.data, m.indices, rows)
    assert (sp.csr_matrix((d, i, p), shape=(4, 12)) != m[rows]).nnz == 0


def test_streamed_epochs_cover_every_cell_once_in_single_source_batches(sim, sim_file):
    backed = read_backed(sim_file)
    cells = prepare_cells(backed, setup_reference(backed, batch_key="batch")).cells
    stream = StreamingBatches(cells, batch_size=64, max_genes=50, gene_dropout=0.2, chunk_size=50, window_chunks=3)
    expected = count_source_batches(cells.domains, 64)  # ceil(n / 64) per source, whatever the windows
    assert len(stream) == expected
    orders = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        batches = list(stream)
        assert len(batches) == expected
        rows = np.concatenate([b.rows.numpy() for b in batches])
        assert np.array_equal(np.sort(rows), np.arange(sim.n_obs))
        for b in batches:
            assert len(set(cells.domains[b.rows.numpy()].tolist())) == 1
            assert b.teacher["rna"].lengths.max() <= 50
        orders.append(rows)
    assert not np.array_equal(orders[0], orders[1])


def test_streamed_batch_holds_the_same_values_as_an_in_memory_batch(sim, sim_file):
    backed = read_backed(sim_file)
    setup = setup_reference(backed, batch_key="batch")
    on_disk = prepare_cells(backed, setup).cells
    in_memory = prepare_cells(sim, setup).cells
    batch = next(iter(StreamingBatches(on_disk, batch_size=32, chunk_size=64, window_chunks=2)))
    ref = in_memory.batch(batch.rows.numpy())
    for view in ("student", "teacher"):  # no augmentation: both views are the full cells
        for field in ("indices", "values", "offsets"):
            np.testing.assert_array_equal(getattr(getattr(batch, view)["rna"], field).numpy(),
                                          getattr(ref.student["rna"], field).numpy())


def test_ranks_read_disjoint_chunks_and_run_equally_many_steps(sim, sim_file):
    backed = read_backed(sim_file)
    cells = prepare_cells(backed, setup_reference(backed, batch_key="batch")).cells
    windows = [chunk_windows(sim.n_obs, 40, 2, True, seed=1, epoch=0, num_replicas=2, rank=r) for r in (0, 1)]
    rows = [np.concatenate([window_rows(w) for w in ws]) for ws in windows]
    assert np.intersect1d(rows[0], rows[1]).size == 0
    assert np.array_equal(np.sort(np.concatenate(rows)), np.arange(sim.n_obs))
    streams = [StreamingBatches(cells, 32, chunk_size=40, window_chunks=2, seed=1, num_replicas=2, rank=r)
               for r in (0, 1)]
    seen = [np.concatenate([b.rows.numpy() for b in s]) for s in streams]
    assert len(streams[0]) == len(streams[1]) == len(list(streams[1]))
    assert np.intersect1d(seen[0], seen[1]).size == 0
    assert np.union1d(seen[0], seen[1]).size == sim.n_obs


def _streaming_peak(path, chunk_size):
    backed = read_backed(path)
    cells = prepare_cells(backed, setup_reference(backed, batch_key="batch")).cells
    stream = StreamingBatches(cells, batch_size=256, max_genes=64, gene_dropout=0.2, chunk_size=chunk_size,
                              window_chunks=2, prefetch_batches=2)
    tracemalloc.start()
    try:
        n_cells = sum(b.n_cells for b in stream)
        return tracemalloc.get_traced_memory()[1], n_cells, cells.X.nbytes
    finally:
        tracemalloc.stop()


def test_streaming_memory_grows_with_the_window_not_the_file(tmp_path):
    small = simulate_to_h5ad(tmp_path / "small.h5ad", 8_000, 200, n_batches=3, seed=2)
    large = simulate_to_h5ad(tmp_path / "large.h5ad", 32_000, 200, n_batches=3, seed=2)
    peak_small, n_small, _ = _streaming_peak(small, 400)
    peak_large, n_large, x_large = _streaming_peak(large, 400)
    peak_large_window, _, _ = _streaming_peak(large, 1600)
    assert (n_small, n_large) == (8_000, 32_000)
    assert peak_large < 1.3 * peak_small  # 4x the cells, about the same peak
    assert peak_large < 0.3 * x_large  # a small fraction of X (21 MB) is ever in memory
    assert peak_large_window > 2 * peak_large  # the peak follows the window size


def test_concerto_trains_and_embeds_from_a_backed_file(sim, sim_file, trained_model):
    from scconcerto import Concerto

    backed = read_backed(sim_file)
    emb_disk = trained_model.embed(backed, device="cpu")
    emb_memory = trained_model.embed(sim, device="cpu")
    np.testing.assert_allclose(emb_disk, emb_memory, atol=1e-6)
    np.testing.assert_allclose(emb_memory, trained_model.reference.embedding, atol=1e-5)
    unseen = read_backed(sim_file)
    unseen.obs["batch"] = "new_source"  # AdaBN statistics are accumulated while streaming too
    copy = sim.copy()
    copy.obs["batch"] = "new_source"
    np.testing.assert_allclose(trained_model.embed(unseen, device="cpu"), trained_model.embed(copy, device="cpu"),
                               atol=1e-5)
    model = Concerto(backed, batch_key="batch", label_key="cell_type").train(epochs=1, progress=False,
                                                                            device="cpu")
    assert model.reference.embedding.shape == (sim.n_obs, 128)
    assert np.isfinite(model.history[0]["loss"])


def test_single_pass_adabn_equals_adapting_a_copy_then_embedding(sim, trained_model):
    from scconcerto.train import adapt_batch_norm, embed_cells

    copy = sim.copy()
    copy.obs["batch"] = np.where(np.arange(sim.n_obs) % 3 == 0, "new_a", "batch_0")  # one unseen source
    cells = prepare_cells(copy, trained_model.setup).cells
    new = sorted(set(cells.domains[cells.domains >= len(trained_model.setup.sources)].tolist()))
    one_pass = embed_cells(trained_model.network, cells, batch_size=100, device="cpu", adapt_domains=new)
    adapted = adapt_batch_norm(trained_model.network, cells, new, batch_size=64, device="cpu")
    two_pass = embed_cells(adapted, cells, batch_size=128, device="cpu")
    np.testing.assert_allclose(one_pass, two_pass, atol=1e-5)


def test_hvg_on_a_backed_file_are_those_chosen_in_memory(sim, sim_file, monkeypatch):
    from scconcerto.data import setup as setup_module

    in_memory = setup_reference(sim, batch_key="batch", hvg=50).genes
    assert len(in_memory) == 50
    assert setup_reference(read_backed(sim_file), batch_key="batch", hvg=50).genes == in_memory
    monkeypatch.setattr(setup_module, "HVG_MAX_CELLS", 200)  # larger references: a seeded sample of cells
    sampled = setup_reference(sim, batch_key="batch", hvg=50).genes
    assert setup_reference(read_backed(sim_file), batch_key="batch", hvg=50).genes == sampled
    assert len(set(sampled) & set(in_memory)) >= 35


def test_write_rows_streams_a_subset_into_a_new_file(sim, sim_file, tmp_path):
    rows = np.flatnonzero(sim.obs["batch"].to_numpy() == "batch_1")
    out = write_rows_h5ad(sim_file, tmp_path / "part.h5ad", rows[::-1], block_rows=37)
    part = ad.read_h5ad(out)
    assert (part.X != sim.X[rows]).nnz == 0
    assert part.obs_names.tolist() == sim.obs_names[rows].tolist()
    with pytest.raises(Exception, match="exists"):
        write_rows_h5ad(sim_file, out, rows)


def test_prefetch_forwards_errors_and_stops_early():
    def items():
        yield 1
        yield 2
        raise ValueError("boom")

    it = prefetch(items(), depth=1)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(ValueError, match="boom"):
        next(it)
    consumed = []
    for x in prefetch(iter(range(1000)), depth=2):
        consumed.append(x)
        if x == 3:
            break
    assert consumed == [0, 1, 2, 3]


def test_streamed_batches_drop_the_teachers_proteins_as_in_memory(sim_protein, tmp_path):
    """Modality dropout is part of the objective whatever the storage: with probability 1 every streamed
    batch's teacher is RNA-only, with 0 none is (the student keeps its proteins)."""
    path = tmp_path / "cite.h5ad"
    sim_protein.write_h5ad(path)
    backed = read_backed(path)
    cells = prepare_cells(backed, setup_reference(backed, batch_key="batch", protein_key="protein")).cells
    for rate, expected in ((1.0, False), (0.0, True)):
        batches = list(StreamingBatches(cells, batch_size=64, max_genes=50, chunk_size=100, window_chunks=2,
                                        modality_dropout=rate))
        assert all(("protein" in b.teacher) == expected and "protein" in b.student for b in batches)
    from scconcerto.train import TrainConfig
    from scconcerto.train.plan import training_loader

    loader = training_loader(cells, TrainConfig(batch_size=64, modality_dropout=1.0), chunk_size=100, window_chunks=2)
    assert not any("protein" in b.teacher for b in loader)  # the training loader passes the setting on
