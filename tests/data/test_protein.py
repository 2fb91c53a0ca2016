"""Antibody background: fitted between the negative and the positive cells; the views hold proteins above it."""

from __future__ import annotations

import numpy as np
import pytest

from scconcerto.data.protein import above_background, fit_protein_background


def _two_populations(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Column 0: 70 % negative cells around 0.4, 30 % positive around 2.5; column 1: all cells around 3."""
    rng = np.random.default_rng(seed)
    positive = rng.random(4000) < 0.3
    marker = np.where(positive, rng.normal(2.5, 0.4, 4000), rng.normal(0.4, 0.1, 4000))
    return np.column_stack([marker, np.full(4000, 3.0)]).astype(np.float32), positive


def test_background_separates_negative_from_positive_cells():
    values, positive = _two_populations()
    background = fit_protein_background(values)
    assert background.shape == (2,) and background.dtype == np.float32
    assert 0.6 < background[0] < 1.8  # between the two populations (means 0.4 and 2.5)
    assert background[1] == 0.0  # a constant antibody has no background to fit: every cell keeps it
    seen = above_background(values, background)
    assert ((seen[:, 0] > 0) == positive).mean() > 0.99
    np.testing.assert_array_equal(seen[positive, 0], values[positive, 0])  # kept values are unchanged
    np.testing.assert_array_equal(seen[:, 1], values[:, 1])


def test_background_does_not_depend_on_a_constant_shift_of_the_negatives_alone():
    values, positive = _two_populations(1)
    shifted = values.copy()
    shifted[:, 0] += 1.0  # every cell binds more antibody: the split moves with the cells
    seen, seen_shifted = (above_background(v, fit_protein_background(v)) for v in (values, shifted))
    np.testing.assert_array_equal(seen[:, 0] > 0, seen_shifted[:, 0] > 0)


def test_inputs_are_left_alone_and_checked():
    values, _ = _two_populations()
    before = values.copy()
    above_background(values, fit_protein_background(values))
    np.testing.assert_array_equal(values, before)
    assert above_background(values, None) is values
    with pytest.raises(ValueError, match="background levels"):
        above_background(values, np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="cells x proteins"):
        fit_protein_background(values[:, 0])


def test_large_references_fit_on_a_seeded_subset(monkeypatch):
    import scconcerto.data.protein as protein

    values, _ = _two_populations()
    monkeypatch.setattr(protein, "MAX_FIT_CELLS", 1000)
    first, again = protein.fit_protein_background(values, seed=3), protein.fit_protein_background(values, seed=3)
    np.testing.assert_array_equal(first, again)
    assert 0.6 < first[0] < 1.8


def test_views_hold_proteins_above_background_and_old_setups_every_value(sim_protein):
    from scconcerto.data.setup import DataSetup, prepare_cells, setup_reference

    setup = setup_reference(sim_protein, protein_key="protein")
    assert len(setup.protein_background) == 6
    rows = np.arange(50)
    cells = prepare_cells(sim_protein, setup).cells
    teacher = cells.batch(rows).teacher["protein"]
    expected = cells.protein[rows] > np.asarray(setup.protein_background)
    assert teacher.indices.numel() == expected.sum() < expected.size
    # the values kept for imputation are not gated
    assert (cells.protein[rows] > 0).all()
    # a model saved before backgrounds were fitted keeps seeing every non-zero value
    saved = setup.to_dict()
    del saved["protein_background"]
    old = prepare_cells(sim_protein, DataSetup.from_dict(saved)).cells
    assert old.protein_background is None and old.batch(rows).teacher["protein"].indices.numel() == expected.size
    unfitted = setup_reference(sim_protein, protein_key="protein", protein_background=False)
    assert unfitted.protein_background == []
