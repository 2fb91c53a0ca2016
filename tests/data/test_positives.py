"""Neighbour positives: who may be a cell's positive, and the student view built from it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scconcerto.data import prepare_cells, setup_reference
from scconcerto.data.positives import expression_components, joint_components, neighbor_positives


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
