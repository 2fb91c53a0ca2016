"""Neighbour positives: who may be a cell's positive, and the student view built from it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scconcerto.data import prepare_cells, setup_reference
from scconcerto.data.positives import PositiveSearch, expression_components, joint_components, neighbor_positives


@pytest.fixture(scope="module")
def prepared(sim):
    setup = setup_reference(sim, batch_key="batch", label_key="cell_type")
    return prepare_cells(sim, setup)


def test_positives_stay_in_their_source_and_are_mostly_the_same_type(sim, prepared):
    cells = prepared.cells
    nb = neighbor_positives(cells, k=8, seed=0)
    assert nb.shape == (cells.n_cells, 8)
    assert (cells.domains[nb] == cells.domains[:, None]).all()
    assert not (nb == np.arange(cells.n_cells)[:, None]).any()  # never the cell itself
    types = sim.obs["cell_type"].to_numpy()
    same_type = (types[nb] == types[:, None]).mean()
    assert same_type > 0.9  # unlabeled neighbours in expression space share the simulated type


def test_label_aware_positives_share_the_label_except_open_rows(sim, prepared):
    cells = prepared.cells
    labels = sim.obs["cell_type"].cat.codes.to_numpy().astype(np.int64)
    rng = np.random.default_rng(0)
    wrong = labels.copy()
    flipped = rng.choice(cells.n_cells, 60, replace=False)
    wrong[flipped] = (wrong[flipped] + 1) % 4  # labels disagreeing with expression: positives must follow labels
    open_rows = np.setdiff1d(np.arange(cells.n_cells), flipped)[:50]
    nb = neighbor_positives(cells, k=5, labels=wrong, open_rows=open_rows, seed=0)
    closed = np.setdiff1d(np.arange(cells.n_cells), open_rows)
    assert (wrong[nb[closed]] == wrong[closed, None]).all()
    assert (cells.domains[nb] == cells.domains[:, None]).all()
    true = sim.obs["cell_type"].to_numpy()
    assert (true[nb[open_rows]] == true[open_rows, None]).mean() > 0.9  # open rows search by expression


def test_small_groups_repeat_members_and_singletons_are_their_own_positive(prepared):
    cells = prepared.cells
    labels = np.zeros(cells.n_cells, dtype=np.int64)
    first = np.flatnonzero(cells.domains == 0)
    labels[first[:3]] = 7   # a group of three cells
    labels[first[3]] = 9    # a group of one
    nb = neighbor_positives(cells, k=6, labels=labels, seed=0)
    trio = first[:3]
    for r in trio:
        assert set(nb[r]) == set(trio) - {r}
    assert (nb[first[3]] == first[3]).all()


def test_positives_are_reproducible_and_components_unit_norm(prepared):
    cells = prepared.cells
    assert np.array_equal(neighbor_positives(cells, 5, seed=3), neighbor_positives(cells, 5, seed=3))
    z = expression_components(cells, 10, seed=0)
    assert z.shape == (cells.n_cells, 10)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)


def test_student_view_comes_from_the_drawn_positive(prepared):
    cells = prepared.cells
    partner = np.roll(np.arange(cells.n_cells), 1)
    cells_with = dataclasses.replace(cells, positives=partner[:, None])
    rows = np.array([5, 17, 230])
    batch = cells_with.batch(rows, max_genes=None, rng=np.random.default_rng(0), gene_dropout=0.0)
    own = cells.batch(rows)
    other = cells.batch(partner[rows])
    assert np.array_equal(batch.student["rna"].indices.numpy(), other.student["rna"].indices.numpy())
    np.testing.assert_allclose(batch.student["rna"].values.numpy(), other.student["rna"].values.numpy())
    assert np.array_equal(batch.teacher["rna"].indices.numpy(), own.teacher["rna"].indices.numpy())
    assert np.array_equal(batch.rows.numpy(), rows)


def test_joint_components_average_the_cosines_of_their_spaces():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 4)), 5.0 * rng.normal(size=(7, 3))

    def cosines(m):
        u = m / np.linalg.norm(m, axis=1, keepdims=True)
        return u @ u.T

    z = joint_components(a, b)
    assert z.shape == (7, 7) and z.dtype == np.float32
    np.testing.assert_allclose(z @ z.T, (cosines(a) + cosines(b)) / 2, atol=1e-6)
    np.testing.assert_allclose(joint_components(a), a / np.linalg.norm(a, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="same cells"):
        joint_components(a, b[:5])


def test_positives_among_some_cells_are_their_nearest_in_that_set(sim, prepared):
    """``PositiveSearch.among`` looks only at the cells given (a streamed window): a cell's positives are its
    nearest cells of the same source (and group) in that set, by brute force; open cells ignore the groups."""
    cells = prepared.cells
    z = expression_components(cells, 10, seed=0)
    groups = sim.obs["cell_type"].cat.codes.to_numpy().astype(np.int64)
    groups[::7] = -1  # unlabeled / calibration cells search their whole source
    search = PositiveSearch(3, z, groups)
    rows = np.random.default_rng(0).choice(cells.n_cells, 250, replace=False)
    domains = cells.domains[rows]
    got = rows[search.among(rows, domains)]
    sims = z[rows] @ z[rows].T
    for i in range(len(rows)):
        allowed = (domains == domains[i]) & (np.arange(len(rows)) != i)
        if groups[rows[i]] >= 0:
            allowed &= groups[rows] == groups[rows[i]]
        best = rows[np.flatnonzero(allowed)[np.argsort(-sims[i, allowed])[:3]]]
        assert set(got[i]) == set(best)
    whole = PositiveSearch(3, z, groups).among(np.arange(cells.n_cells), cells.domains)
    assert np.array_equal(whole, neighbor_positives(cells, 3, labels=np.where(groups < 0, 0, groups),
                                                    open_rows=np.flatnonzero(groups < 0), components=z))


def _row_ids(cells) -> dict:
    """Each cell's full normalized row (indices and values) -> its row number."""
    full = cells.batch(np.arange(cells.n_cells)).student["rna"]
    ind, val, off = full.indices.numpy(), full.values.numpy(), full.offsets.numpy()
    return {(ind[a:b].tobytes(), val[a:b].tobytes()): r for r, (a, b) in enumerate(zip(off[:-1], off[1:]))}


def _student_rows(batch, ids: dict) -> np.ndarray:
    s = batch.student["rna"]
    ind, val, off = s.indices.numpy(), s.values.numpy(), s.offsets.numpy()
    return np.array([ids[(ind[a:b].tobytes(), val[a:b].tobytes())] for a, b in zip(off[:-1], off[1:])])


def _on_disk_and_in_memory(adata, tmp_path, batch_key: str):
    """The same cells prepared from a backed h5ad file and from memory."""
    from scconcerto.data.backed import read_backed

    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    backed = read_backed(path)
    return (prepare_cells(backed, setup_reference(backed, batch_key=batch_key)).cells,
            prepare_cells(adata, setup_reference(adata, batch_key=batch_key)).cells)


def test_streamed_windows_draw_positives_among_their_own_cells(sim, tmp_path):
    """Streamed from disk, a cell's student view is its nearest same-source cell in the window read with it:
    with one window for the whole file that is the in-memory positive; with windows of one 100-row chunk,
    positives are cells read with the teacher or carried over from an earlier window, never later ones."""
    from scconcerto.data.streaming import StreamingBatches

    on_disk, in_memory = _on_disk_and_in_memory(sim, tmp_path, "batch")
    z = expression_components(in_memory, 10, seed=0)
    on_disk.positive_search = PositiveSearch(1, z)
    ids = _row_ids(in_memory)
    everywhere = neighbor_positives(in_memory, 1, components=z)[:, 0]
    one_window = StreamingBatches(on_disk, batch_size=64, chunk_size=200, window_chunks=3)
    for batch in one_window:
        assert np.array_equal(_student_rows(batch, ids), everywhere[batch.rows.numpy()])
    chunks = StreamingBatches(on_disk, batch_size=32, chunk_size=100, window_chunks=1)
    windows, _ = chunks.plan(0)
    window_of = np.empty(sim.n_obs, dtype=np.int64)  # the window in which each row is read
    for w, ranges in enumerate(windows):
        for start, stop in ranges:
            window_of[start:stop] = w
    teacher, student = [], []
    for batch in chunks:
        rows, partners = batch.rows.numpy(), _student_rows(batch, ids)
        assert window_of[partners].max() <= window_of[rows].max()  # read with the batch or before it, never after
        teacher.append(rows)
        student.append(partners)
    teacher, student = np.concatenate(teacher), np.concatenate(student)
    assert np.array_equal(np.sort(teacher), np.arange(sim.n_obs))
    assert (in_memory.domains[student] == in_memory.domains[teacher]).all() and (student != teacher).all()
    same_window = np.mean(window_of[student] == window_of[teacher])
    assert same_window > 0.6 > 3 * np.mean(window_of[everywhere] == window_of)  # in memory: any window


def test_positives_across_sources_are_each_cells_nearest_of_any_source(prepared):
    """Searched across sources, a cell's positive is its most cosine-similar other cell of the whole reference
    (checked against a dense similarity matrix of 600 cells); within sources it never leaves its own. The
    sources are drawn at random here, so that a cell's nearest cell is often of another source."""
    rng = np.random.default_rng(0)
    cells = dataclasses.replace(prepared.cells, domains=rng.integers(0, 3, prepared.cells.n_cells))
    z = expression_components(cells, 10, seed=0)
    nearest = neighbor_positives(cells, 1, components=z, across_sources=True)[:, 0]
    similarity = z @ z.T
    np.fill_diagonal(similarity, -np.inf)
    rows = np.arange(len(z))
    np.testing.assert_allclose(similarity[rows, nearest], similarity.max(axis=1), atol=1e-5)  # ties may swap
    assert (cells.domains[nearest] != cells.domains).mean() > 0.5  # two thirds of the cells are elsewhere
    within = neighbor_positives(cells, 1, components=z)[:, 0]
    assert (cells.domains[within] == cells.domains).all()


def test_label_aware_positives_across_sources_keep_the_label(sim, prepared):
    rng = np.random.default_rng(1)
    cells = dataclasses.replace(prepared.cells, domains=rng.integers(0, 3, prepared.cells.n_cells))
    labels = sim.obs["cell_type"].cat.codes.to_numpy().astype(np.int64)
    nb = neighbor_positives(cells, k=5, labels=labels, seed=0, across_sources=True)
    assert (labels[nb] == labels[:, None]).all()
    assert (cells.domains[nb] != cells.domains[:, None]).mean() > 0.5


def test_streamed_windows_search_across_sources_as_in_memory(sim, tmp_path):
    from scconcerto.data.streaming import StreamingBatches

    data = sim.copy()
    data.obs["donor"] = np.random.default_rng(0).choice(["a", "b", "c"], data.n_obs)
    on_disk, in_memory = _on_disk_and_in_memory(data, tmp_path, "donor")
    z = expression_components(in_memory, 10, seed=0)
    on_disk.positive_search = PositiveSearch(1, z, across_sources=True)
    ids = _row_ids(in_memory)
    everywhere = neighbor_positives(in_memory, 1, components=z, across_sources=True)[:, 0]
    assert (in_memory.domains[everywhere] != in_memory.domains).mean() > 0.5
    for batch in StreamingBatches(on_disk, batch_size=64, chunk_size=200, window_chunks=3):
        assert np.array_equal(_student_rows(batch, ids), everywhere[batch.rows.numpy()])


def test_shared_neighbour_rank_prefers_candidates_that_share_the_cells_neighbours():
    from scconcerto.data.positives import shared_neighbour_rank

    # each row's 3 nearest rows, nearest first; with itself, row 0's neighbours are {0, 1, 2, 3}
    nearest = np.array([[1, 2, 3], [0, 4, 5], [0, 3, 1], [0, 2, 1], [5, 1, 0], [4, 1, 0]])
    ranked = shared_neighbour_rank(nearest, 2, block_rows=4)  # two blocks
    # row 0 shares {0, 1} with row 1 but all four with rows 2 and 3 (the nearer first); row 1 shares all four
    # of its neighbours with rows 4 and 5, two with row 0
    assert ranked[0].tolist() == [2, 3] and ranked[1].tolist() == [4, 5]
    assert ranked[2].tolist() == [0, 3] and ranked[4].tolist() == [5, 1]
    assert np.array_equal(shared_neighbour_rank(nearest, 3), nearest[:, :3])  # k == m: nothing to rank


def test_shared_ranking_draws_more_positives_of_the_cells_own_type_at_a_border():
    rng = np.random.default_rng(0)
    # two overlapping types in 20 noisy dimensions: the nearest cells of a cell at the border include the other
    # type (own-type share 0.86 / 0.89 at seed 0 for the nearest / shared ranking; +0.03 at seeds 1 and 2 too)
    centres = np.zeros((2, 20))
    centres[1, 0] = 3.0
    types = np.repeat([0, 1], 400)
    z = (centres[types] + rng.normal(size=(800, 20))).astype(np.float32)
    z -= z.mean(axis=0)
    plain = PositiveSearch(10, z, across_sources=True).among(np.arange(800), np.zeros(800))
    shared = PositiveSearch(10, z, across_sources=True, candidates=30).among(np.arange(800), np.zeros(800))
    own = lambda nb: (types[nb] == types[:, None]).mean()  # noqa: E731
    assert own(shared) > own(plain) + 0.01
    assert not (shared == np.arange(800)[:, None]).any()  # never the cell itself
    candidates = PositiveSearch(30, z, across_sources=True).among(np.arange(800), np.zeros(800))
    assert all(set(s) <= set(c) for s, c in zip(shared, candidates))  # chosen among the 30 nearest


def test_shared_ranking_keeps_label_aware_positives_in_their_label(sim, prepared):
    cells = prepared.cells
    labels = sim.obs["cell_type"].cat.codes.to_numpy().astype(np.int64)
    nb = neighbor_positives(cells, k=5, labels=labels, seed=0, candidates=30)
    assert (labels[nb] == labels[:, None]).all()
    assert (cells.domains[nb] == cells.domains[:, None]).all()


def test_streamed_windows_rank_by_shared_neighbours_as_in_memory(sim, tmp_path):
    """With one window for the whole file, a streamed cell's student view is its in-memory positive under the
    shared-neighbour ranking too, and that ranking picks other cells than the plain nearest one."""
    from scconcerto.data.streaming import StreamingBatches

    on_disk, in_memory = _on_disk_and_in_memory(sim, tmp_path, "batch")
    z = expression_components(in_memory, 10, seed=0)
    on_disk.positive_search = PositiveSearch(1, z, across_sources=True, candidates=30)
    ids = _row_ids(in_memory)
    shared = neighbor_positives(in_memory, 1, components=z, across_sources=True, candidates=30)[:, 0]
    nearest = neighbor_positives(in_memory, 1, components=z, across_sources=True)[:, 0]
    assert np.mean(shared != nearest) > 0.1
    for batch in StreamingBatches(on_disk, batch_size=64, chunk_size=200, window_chunks=3):
        assert np.array_equal(_student_rows(batch, ids), shared[batch.rows.numpy()])
