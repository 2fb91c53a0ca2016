"""The guard of domain adaptation: a collapsed target composition is reported and the non-adapted classifier kept."""

import copy
import logging

import numpy as np
import pytest
import torch

from scconcerto import Concerto, InputError
from scconcerto.datasets import simulate
from scconcerto.model.classifier import adaptation_check, effective_classes
from scconcerto.train.classifier import adapt_classifier_norms

FAST = dict(progress=False, device="cpu")


def test_effective_classes_by_hand():
    eff, shares = effective_classes(np.array([0, 0, 1, 1]), 3)
    assert eff == pytest.approx(2.0) and shares.tolist() == [0.5, 0.5, 0.0]
    assert effective_classes(np.array([2, 2, 2]), 3)[0] == pytest.approx(1.0)
    # shares 1/4, 1/4, 1/2: exp(-(2 * 0.25 ln 0.25 + 0.5 ln 0.5)) = exp(1.5 ln 2) = 2 ** 1.5
    assert effective_classes(np.array([0, 1, 2, 2]), 3)[0] == pytest.approx(2 ** 1.5)


@pytest.fixture(scope="module")
def split():
    adata = simulate(360, 200, n_types=3, n_batches=3, seed=5, batch_effect=1.0)
    source = adata[adata.obs["batch"] != "batch_2"].copy()
    target = adata[adata.obs["batch"] == "batch_2"].copy()
    target.obs["batch"] = "plate_9"
    return source, target


@pytest.fixture(scope="module")
def plain(split):
    source, _ = split
    model = Concerto(source, batch_key="batch", label_key="cell_type")
    return model.fit_classifier(pretrain=False, epochs=6, seed=0, **FAST)


def test_a_collapsed_adaptation_keeps_the_classifier_without_target(split, plain, caplog):
    source, target = split
    model = Concerto(source, batch_key="batch", label_key="cell_type")
    with caplog.at_level(logging.WARNING, logger="scconcerto"):
        # a ratio above 1 counts every adaptation as collapsed: the fallback must be the plain classifier
        model.fit_classifier(target=target, pretrain=False, epochs=6, seed=0, consistency_weight=1.0,
                             collapse_ratio=10.0, **FAST)
    summary = model.annotation_summary
    assert summary["adaptation"]["collapsed"] and not summary["adaptation"]["used"]
    assert summary["adaptation"]["target_sources"] == ["plate_9"]
    assert summary["domains"] == ["batch_0", "batch_1"] and summary["target_sources"] == []
    assert "collapse" in caplog.text and "without adaptation is kept" in caplog.text
    kept = model.predict(target.copy(), inplace=False, device="cpu")
    reference = plain.predict(target.copy(), inplace=False, device="cpu")
    np.testing.assert_allclose(kept.probabilities, reference.probabilities, atol=1e-5)


def test_an_adaptation_that_holds_is_kept(split, plain):
    source, target = split
    model = Concerto(source, batch_key="batch", label_key="cell_type")
    model.fit_classifier(target=target, pretrain=False, epochs=6, seed=0, consistency_weight=1.0, **FAST)
    summary = model.annotation_summary
    check = summary["adaptation"]
    assert check["used"] and not check["collapsed"] and summary["target_sources"] == ["plate_9"]
    assert check["effective_classes_adapted"] > 2.5 and check["agreement"] > 0.8
    acc = (model.predict(target.copy(), inplace=False, device="cpu").labels
           == target.obs["cell_type"].astype(str).to_numpy()).mean()
    assert acc > 0.9


def test_the_check_flags_a_classifier_that_calls_every_target_cell_one_class(split, plain):
    _, target = split
    cells = plain._prepare(target, batch_key=None).cells
    n_labeled = plain.classifier.network.n_domains
    cells.domains = np.full(cells.n_cells, n_labeled, dtype=np.int64)
    same_as_plain = adapt_classifier_norms(plain.classifier.network, cells, [n_labeled], device="cpu")  # AdaBN on the target
    adapted = copy.deepcopy(same_as_plain)
    with torch.no_grad():
        adapted.head.linear.bias[0] += 1e3
    classes = plain.annotation_summary["classes"]
    check = adaptation_check(plain.classifier.network, adapted, cells, classes, collapse_ratio=0.75, device="cpu")
    assert check["collapsed"] and check["effective_classes_adapted"] == pytest.approx(1.0)
    assert check["largest_class_adapted"] == classes[0] and check["largest_share_adapted"] == 1.0
    assert check["effective_classes_plain"] > 2.5
    same = adaptation_check(plain.classifier.network, same_as_plain, cells, classes, collapse_ratio=0.75, device="cpu")
    assert not same["collapsed"] and same["agreement"] == 1.0


def test_by_default_the_target_is_not_adapted_to_and_the_user_is_told(split, plain, caplog):
    source, target = split
    model = Concerto(source, batch_key="batch", label_key="cell_type")
    with caplog.at_level(logging.WARNING, logger="scconcerto"):
        model.fit_classifier(target=target, pretrain=False, epochs=6, seed=0, **FAST)
    summary = model.annotation_summary
    assert summary["target_sources"] == [] and summary["domains"] == ["batch_0", "batch_1"]
    assert summary.get("adaptation") is None and "consistency" not in summary["history"][-1]
    assert "not adapted to the target" in caplog.text and "consistency_weight" in caplog.text
    kept = model.predict(target.copy(), inplace=False, device="cpu")
    reference = plain.predict(target.copy(), inplace=False, device="cpu")
    np.testing.assert_allclose(kept.probabilities, reference.probabilities, atol=1e-5)


def test_a_negative_consistency_weight_is_refused(split):
    source, target = split
    model = Concerto(source, batch_key="batch", label_key="cell_type")
    with pytest.raises(InputError, match="consistency_weight must be a number of at least 0"):
        model.fit_classifier(target=target, pretrain=False, epochs=1, consistency_weight=-1.0, **FAST)
