"""Training with neighbour positives: what the model records, and the paper's mode."""

from __future__ import annotations

import numpy as np
import pytest

from scconcerto import Concerto
from scconcerto._errors import InputError


def test_label_aware_training_records_positives_and_a_calibration_hold_out(trained_model, tmp_path):
    cfg = trained_model.train_config
    assert cfg.positive_neighbors == 10 and cfg.label_positives
    rows = trained_model.reference.extra["calibration_rows"]
    n_labeled = int((trained_model.reference.labels["cell_type"] >= 0).sum())
    assert len(rows) == round(0.25 * n_labeled) and len(np.unique(rows)) == len(rows)
    trained_model.save(tmp_path / "m")
    loaded = Concerto.load(tmp_path / "m")
    assert np.array_equal(loaded.reference.extra["calibration_rows"], rows)
    assert loaded.train_config.positive_neighbors == 10


def test_paper_views_and_unlabeled_positives(sim):
    small = sim[:200].copy()
    paper = Concerto(small, batch_key="batch", label_key="cell_type").train(
        epochs=1, positive_neighbors=0, progress=False, prepare_mapping=False)
    assert paper.train_config.positive_neighbors == 0 and not paper.train_config.label_positives
    assert "calibration_rows" not in paper.reference.extra
    unlabeled = Concerto(small, batch_key="batch").train(epochs=1, progress=False, prepare_mapping=False)
    assert unlabeled.train_config.positive_neighbors == 10 and not unlabeled.train_config.label_positives


def test_negative_positive_neighbors_is_a_clear_error(sim):
    with pytest.raises(InputError, match="positive_neighbors"):
        Concerto(sim[:100].copy(), batch_key="batch").train(epochs=1, positive_neighbors=-1, progress=False)
