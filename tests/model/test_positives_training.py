"""Training with neighbour positives: what the model records, and the paper's mode."""

from __future__ import annotations

import json

import numpy as np
import pytest

import scconcerto.data.positives as positives
import scconcerto.data.scaled_space as scaled_space
from scconcerto import Concerto
from scconcerto._errors import InputError


def test_label_aware_training_records_positives_and_a_calibration_hold_out(trained_model, tmp_path):
    cfg = trained_model.train_config
    assert cfg.positive_neighbors == 10 and cfg.label_positives and cfg.positive_sources == "any"
    rows = trained_model.reference.calibration_rows
    n_labeled = int((trained_model.reference.labels["cell_type"] >= 0).sum())
    assert len(rows) == round(0.25 * n_labeled) and len(np.unique(rows)) == len(rows)
    trained_model.save(tmp_path / "m")
    loaded = Concerto.load(tmp_path / "m")
    assert np.array_equal(loaded.reference.calibration_rows, rows)
    assert loaded.train_config.positive_neighbors == 10 and loaded.train_config.positive_space == "centred"
    assert loaded.train_config.positive_sources == "any"
    assert loaded.train_config.positive_rank == "nearest"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["train"]["positive_space"]  # a model saved before the settings existed (and before the config
    del config["train"]["positive_sources"]
    del config["train"]["positive_rank"]
    del config["config_checksum"]  # carried its own checksum)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    old = Concerto.load(tmp_path / "m").train_config
    assert old.positive_space == "svd" and old.positive_sources == "same" and old.positive_rank == "nearest"


def test_paper_views_and_unlabeled_positives(sim):
    small = sim[:200].copy()
    paper = Concerto(small, batch_key="batch", label_key="cell_type").train(
        epochs=1, positive_neighbors=0, progress=False, prepare_mapping=False)
    assert paper.train_config.positive_neighbors == 0 and not paper.train_config.label_positives
    assert paper.reference.calibration_rows is None
    unlabeled = Concerto(small, batch_key="batch").train(epochs=1, progress=False, prepare_mapping=False)
    assert unlabeled.train_config.positive_neighbors == 10 and not unlabeled.train_config.label_positives


def test_positives_are_searched_across_sources_unless_asked_for_the_same_source(sim, monkeypatch):
    """By default (``positive_sources="any"``) the search pools every source; ``"same"`` keeps each cell's
    positives in its own source (the drawn rows are checked on the training cells); a bad value is refused."""
    kept = []
    original = positives.neighbor_positives

    def spy(cells, k, **kw):
        out = original(cells, k, **kw)
        kept.append((cells.domains, out))
        return out

    monkeypatch.setattr(positives, "neighbor_positives", spy)
    small = sim[:300].copy()
    small.obs["donor"] = np.random.default_rng(0).choice(["a", "b", "c"], small.n_obs)  # sources that agree
    options = {"epochs": 1, "progress": False, "device": "cpu", "prepare_mapping": False,
               "source_norm": "source"}  # normalized apart: 'auto' would see random donors as one source
    pooled = Concerto(small, batch_key="donor").train(**options)
    domains, rows = kept[-1]
    assert pooled.train_config.positive_sources == "any" and (domains[rows] != domains[:, None]).mean() > 0.5
    own = Concerto(small, batch_key="donor").train(**options, positive_sources="same")
    domains, rows = kept[-1]
    assert own.train_config.positive_sources == "same" and (domains[rows] == domains[:, None]).all()
    with pytest.raises(InputError, match="positive_sources must be one of"):
        Concerto(small, batch_key="donor").train(**options, positive_sources="all")


def test_negative_positive_neighbors_is_a_clear_error(sim):
    with pytest.raises(InputError, match="positive_neighbors"):
        Concerto(sim[:100].copy(), batch_key="batch").train(epochs=1, positive_neighbors=-1, progress=False)


def test_positives_are_searched_in_the_centred_and_scaled_spaces_and_mapping_reuses_the_scaled_one(sim, monkeypatch):
    """By default the positives' search space is the centred and the scaled expression spaces side by side
    (``"centred"``); ``"joint"`` puts the uncentred SVD in place of the centred space, ``"svd"`` searches the
    uncentred SVD alone. The scaled space is fitted once, in training, and mapping uses that one (fitted by
    ``prepare_mapping`` with ``"svd"``, the same)."""
    searched, fits = [], []
    search, fit = positives.neighbor_positives, scaled_space.fit_scaled_space
    monkeypatch.setattr(positives, "neighbor_positives",
                        lambda cells, k, **kw: searched.append(kw["components"]) or search(cells, k, **kw))
    monkeypatch.setattr(scaled_space, "fit_scaled_space",
                        lambda *a, **kw: fits.append(kw.get("scale", True)) or fit(*a, **kw))
    small = sim[:300].copy()
    options = {"epochs": 1, "progress": False, "device": "cpu"}
    centred = Concerto(small, batch_key="batch", label_key="cell_type").train(**options,
                                                                              prepare_mapping={"umap": False})
    scaled = centred.reference.scaled_expression
    assert centred.train_config.positive_space == "centred" and fits == [True, False]
    width = scaled.shape[1]  # the scaled half of the components is mapping's space
    np.testing.assert_allclose(searched[-1][:, -width:] * np.sqrt(2), scaled, atol=1e-5)
    joint = Concerto(small, batch_key="batch", label_key="cell_type").train(
        **options, positive_space="joint", prepare_mapping={"umap": False})
    assert joint.train_config.positive_space == "joint" and fits == [True, False, True]
    np.testing.assert_allclose(searched[-1][:, -width:], searched[-2][:, -width:], atol=1e-6)
    assert not np.allclose(searched[-1][:, :-width], searched[-2][:, :-width], atol=1e-2)  # uncentred, centred
    svd = Concerto(small, batch_key="batch", label_key="cell_type").train(
        **options, positive_space="svd", prepare_mapping={"umap": False})
    assert svd.train_config.positive_space == "svd" and fits == [True, False, True, True]  # by prepare_mapping
    assert searched[-1].shape[1] != searched[-2].shape[1]  # the uncentred space alone
    np.testing.assert_allclose(svd.reference.scaled_expression, scaled, atol=1e-5)
    with pytest.raises(InputError, match="positive_space"):
        Concerto(small, batch_key="batch").train(**options, positive_space="scaled")


def test_the_supervised_term_never_reads_the_held_out_labels(sim):
    """Training labels are the label groups, except on the calibration hold-out (which must stay unseen by
    training for the mapping's calibration to be honest) and on unlabeled cells."""
    from scconcerto.data.setup import label_codes
    from scconcerto.train.reference import label_groups, prepare_reference_training

    small = sim[:300].copy()
    small.obs["cell_type"] = small.obs["cell_type"].astype(object)
    small.obs.iloc[:20, small.obs.columns.get_loc("cell_type")] = None  # unlabeled cells
    model = Concerto(small, batch_key="batch", label_key="cell_type")
    cells = model._prepare(small, what="the reference").cells
    codes = label_codes(small, model.setup)["cell_type"]
    training = prepare_reference_training(cells, [codes], 10, True, "centred", "any", "none", seed=0)
    held = training.calibration_rows
    assert held is not None and len(held) > 0
    assert (cells.training_labels[held] == -1).all()
    assert (cells.training_labels[:20] == -1).all()
    rest = np.setdiff1d(np.arange(small.n_obs), held)
    np.testing.assert_array_equal(cells.training_labels[rest], label_groups([codes])[rest])
    plain = model._prepare(small, what="the reference").cells
    prepare_reference_training(plain, [codes], 10, False, "centred", "any", "none", seed=0)  # labels do not shape it
    assert plain.training_labels is None
