"""Classifier head, teacher classifier, and the sharpened consistency loss (nn/heads.py, nn/consistency.py)."""

import numpy as np
import pytest
import torch

from scconcerto._ragged import Ragged
from scconcerto.nn import ConcertoNetwork
from scconcerto.nn.consistency import consistency_loss, sharpen
from scconcerto.nn.heads import ClassifierHead, TeacherClassifier


def _cells(n_cells=6, n_genes=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n_cells, n_genes, generator=g) * (torch.rand(n_cells, n_genes, generator=g) < 0.4)
    return Ragged.from_dense(dense)


def test_teacher_classifier_copies_the_teacher_exactly_and_leaves_the_network_alone():
    torch.manual_seed(0)
    net = ConcertoNetwork({"rna": 20}, n_domains=2, dim=16, out_dim=8).eval()
    clf = TeacherClassifier.from_network(net, n_classes=3).eval()
    cells, domains = _cells(), torch.tensor([0, 0, 0, 1, 1, 1])
    # the classifier's features are the network's teacher output, bit for bit
    hidden, _ = net.teacher_hidden({"rna": cells})
    torch.testing.assert_close(clf.features({"rna": cells}, domains), net.teacher_tail(hidden, domains))
    logits = clf({"rna": cells}, domains)
    assert logits.shape == (6, 3)
    # the copy is independent: changing it does not change the network
    with torch.no_grad():
        clf.encoders["rna"].embedding.add_(1.0)
    assert not torch.equal(clf.encoders["rna"].embedding, net.teacher_encoders["rna"].embedding)
    assert set(k.split(".")[0] for k in clf.state_dict()) == {"encoders", "tail", "head"}  # no student


def test_architecture_rebuilds_a_classifier_with_identical_state_shapes():
    net = ConcertoNetwork({"rna": 30, "protein": 4}, n_domains=3, dim=16, out_dim=8, dropout=0.2)
    clf = TeacherClassifier.from_network(net, n_classes=5, head_dropout=0.1)
    clf.tail.norm.add_domains(2)
    empty = TeacherClassifier(**clf.architecture())
    assert {k: v.shape for k, v in empty.state_dict().items()} == {k: v.shape for k, v in clf.state_dict().items()}
    assert empty.architecture() == clf.architecture() and empty.n_domains == 5


def test_head_is_affine_in_its_input():
    head = ClassifierHead(4, 3).eval()
    x, y = torch.randn(5, 4), torch.randn(5, 4)
    torch.testing.assert_close(head(x + y) - head(y), head(x) - head(torch.zeros(5, 4)))


def test_sharpen_matches_the_power_formula():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    p = torch.softmax(logits, 1)
    expected = p**2 / (p**2).sum(1, keepdim=True)  # T = 0.5
    torch.testing.assert_close(sharpen(logits, 0.5), expected)
    torch.testing.assert_close(sharpen(logits, 1.0), p)
    with pytest.raises(ValueError):
        sharpen(logits, 0.0)


def test_consistency_loss_is_cross_entropy_to_the_detached_sharpened_target():
    a = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.0]], requires_grad=True)
    b = torch.tensor([[0.5, 0.5, 0.0], [1.0, -1.0, 0.0]], requires_grad=True)
    loss = consistency_loss(a, b, temperature=0.5)
    q = torch.softmax(a.detach() / 0.5, 1)
    expected = -(q * torch.log_softmax(b.detach(), 1)).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert a.grad is None or torch.count_nonzero(a.grad) == 0  # the target view gets no gradient
    assert torch.count_nonzero(b.grad) > 0
    # gradient of CE w.r.t. logits is softmax(b) - q, averaged over cells
    torch.testing.assert_close(b.grad, (torch.softmax(b.detach(), 1) - q) / 2)


def test_consistency_loss_masks_unconfident_cells_and_is_zero_when_views_agree_on_one_hot():
    a = torch.tensor([[5.0, 0.0], [0.1, 0.0]])
    b = torch.tensor([[0.0, 1.0], [3.0, -3.0]])
    only_first = consistency_loss(a, b, temperature=0.5, min_confidence=0.9)
    full_first = consistency_loss(a[:1], b[:1], temperature=0.5)
    assert float(only_first) == pytest.approx(float(full_first))
    assert float(consistency_loss(a, b, min_confidence=1.01)) == 0.0
    big = torch.tensor([[50.0, -50.0]])
    assert float(consistency_loss(big, big, temperature=0.5)) == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(float(consistency_loss(torch.zeros(3, 4), torch.zeros(3, 4))))
