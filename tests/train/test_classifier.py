"""Classifier fine-tuning plan and domain adaptation (train/classifier.py)."""

import numpy as np
import pandas as pd
import pytest
import torch

from scconcerto.data import prepare_cells, setup_reference
from scconcerto.datasets import simulate
from scconcerto.nn import ConcertoNetwork
from scconcerto.nn.heads import TeacherClassifier
from scconcerto.train.classifier import (ClassifierConfig, ClassifierPlan, RowBatchSampler, class_weights,
                                         classifier_logits, fit_classifier_network, recalibrate_norms)


@pytest.fixture(scope="module")
def small():
    """Source cells (2 sources, labeled) and target cells (a third, unseen source) in one vocabulary."""
    adata = simulate(240, 120, n_types=3, n_batches=3, seed=7, markers_per_type=8)
    src, tgt = adata[adata.obs["batch"] != "batch_2"].copy(), adata[adata.obs["batch"] == "batch_2"].copy()
    setup = setup_reference(src, batch_key="batch", label_key="cell_type")
    source = prepare_cells(src, setup).cells
    target = prepare_cells(tgt, setup).cells
    assert set(target.domains.tolist()) == {2}  # the unseen source gets the next domain id
    labels = np.asarray(pd.Categorical(src.obs["cell_type"], categories=setup.labels["cell_type"]).codes, np.int64)
    return setup, source, target, labels


def _classifier(setup, n_domains=3, seed=0):
    torch.manual_seed(seed)
    net = ConcertoNetwork(setup.n_features, len(setup.sources), dim=32, out_dim=32)
    clf = TeacherClassifier.from_network(net, n_classes=len(setup.labels["cell_type"]))
    clf.tail.norm.add_domains(n_domains - clf.n_domains)
    return clf


def test_class_weights_by_hand():
    w = class_weights(np.array([0, 0, 0, 1, -1, 2, 2, 2, 2]), 4)  # 8 labeled cells, 3 classes present
    np.testing.assert_allclose(w, [8 / (3 * 3), 8 / (3 * 1), 8 / (3 * 4), 0.0], rtol=1e-6)


def test_row_sampler_covers_exactly_the_rows_in_single_source_batches_and_reshuffles():
    domains = np.array([0, 1, 0, 1, 0, 1, 0, 0, 1, 1])
    rows = np.array([0, 1, 2, 3, 5, 8, 9])
    sampler = RowBatchSampler(domains, rows, batch_size=2, seed=3)
    first = list(sampler)
    assert sorted(r for b in first for r in b) == rows.tolist()
    assert all(len(set(domains[b])) == 1 for b in first)
    assert len(sampler) == len(first)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_consistency_term_has_a_nonzero_gradient_on_the_teacher(small):
    setup, source, target, labels = small
    clf = _classifier(setup).train()
    plan = ClassifierPlan(clf, labels, ClassifierConfig(), total_steps=1)
    batch = target.batch(np.arange(40), max_genes=50, rng=np.random.default_rng(0), gene_dropout=0.2)
    loss = plan.consistency_term(batch)
    assert loss.requires_grad and float(loss.detach()) > 0
    loss.backward()
    for name in ["encoders.rna.embedding", "encoders.rna.context", "tail.dense.weight", "head.linear.weight"]:
        grad = dict(clf.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_training_step_back_propagates_the_consistency_term(small):
    """The target's own BN affine is reached only through the consistency term: its gradient proves the
    term is part of the loss that is back-propagated (the original code never back-propagated it)."""
    setup, source, target, labels = small
    rng = np.random.default_rng(0)
    batch = {"source": source.batch(np.flatnonzero(source.domains == 0)[:32], 50, rng, 0.2),
             "target": target.batch(np.arange(32), 50, rng, 0.2)}
    for weight, reached in [(1.0, True), (0.0, False)]:
        clf = _classifier(setup).train()
        plan = ClassifierPlan(clf, labels, ClassifierConfig(consistency_weight=weight), total_steps=1)
        plan.training_step(batch, 0).backward()
        target_slot = clf.tail.norm.weight.grad[2]
        assert (float(target_slot.abs().sum()) > 0) is reached
        assert float(clf.tail.norm.weight.grad[0].abs().sum()) > 0  # the source's slot always learns


def test_domain_adaptation_changes_the_target_weights_only_with_the_consistency_loss(small):
    setup, source, target, labels = small
    rows = np.arange(source.n_cells)
    config = dict(epochs=2, batch_size=32, max_genes=64, device="cpu", progress=False, seed=1)
    changed = {}
    for weight in [1.0, 0.0]:
        clf = _classifier(setup)
        before = clf.tail.norm.weight.detach()[2].clone(), clf.tail.norm.bias.detach()[2].clone()
        settings = ClassifierConfig(consistency_weight=weight, **config)
        history = fit_classifier_network(clf, source, rows, labels, settings, target)
        after = clf.tail.norm.weight.detach()[2], clf.tail.norm.bias.detach()[2]
        changed[weight] = not (torch.equal(before[0], after[0]) and torch.equal(before[1], after[1]))
        assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
        assert ("consistency" in history[0]) is (weight > 0)
    assert changed == {1.0: True, 0.0: False}


def test_fine_tuning_learns_the_labels_and_inference_is_deterministic(small):
    setup, source, target, labels = small
    clf = _classifier(setup, n_domains=2)
    train = np.arange(0, source.n_cells, 2)
    fit_classifier_network(clf, source, train, labels, ClassifierConfig(epochs=30, batch_size=32, device="cpu",
                                                                        progress=False, lr=3e-3))
    test = np.arange(1, source.n_cells, 2)
    logits = classifier_logits(clf, source, test, device="cpu")
    assert logits.shape == (test.size, 3)
    assert (logits.argmax(1) == labels[test]).mean() > 0.9
    np.testing.assert_array_equal(logits, classifier_logits(clf, source, test, device="cpu"))
    # AdaBN for an unseen source runs on a copy: the classifier keeps its two domains
    target_logits = classifier_logits(clf, target, device="cpu", adapt_domains=[2])
    assert target_logits.shape == (target.n_cells, 3) and clf.n_domains == 2


def test_recalibrated_statistics_are_the_exact_statistics_of_the_cells(small):
    setup, source, _, _ = small
    clf = _classifier(setup, n_domains=2).eval()
    recalibrate_norms(clf, source, device="cpu")
    rows = np.flatnonzero(source.domains == 1)
    batch = source.batch(rows)
    hidden = sum(clf.encoders[m](batch.teacher[m])[0] for m in clf.modalities)
    with torch.no_grad():
        torch.testing.assert_close(clf.tail.norm.running_mean[1], hidden.mean(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(clf.tail.norm.running_var[1], hidden.var(0), atol=1e-6, rtol=1e-3)


def test_too_few_bn_slots_is_an_error(small):
    setup, source, target, labels = small
    clf = _classifier(setup, n_domains=2)
    with pytest.raises(ValueError, match="BN domains"):
        fit_classifier_network(clf, source, np.arange(10), labels, ClassifierConfig(epochs=1, device="cpu"), target)
