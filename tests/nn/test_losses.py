import math

import torch

from scconcerto.nn import nt_xent


def _hand_nt_xent(za, zb, tau):
    """SPEC.md section 3, written out term by term."""
    z = [v / v.norm() for v in list(za) + list(zb)]
    n = len(za)
    total = 0.0
    for j in range(2 * n):
        pos = (j + n) % (2 * n)
        num = math.exp(float(z[j] @ z[pos]) / tau)
        den = sum(math.exp(float(z[j] @ z[k]) / tau) for k in range(2 * n) if k != j)
        total += -math.log(num / den)
    return total / (2 * n)


def test_nt_xent_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    for tau in (0.1, 0.5):
        assert abs(float(nt_xent(za, zb, tau)) - _hand_nt_xent(za, zb, tau)) < 1e-5


def test_nt_xent_two_cells_closed_form():
    # two cells, identical views, orthogonal cells: l = -log(e^{1/t} / (e^{1/t} + 2))
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2.0))
    assert abs(float(nt_xent(za, za.clone(), tau)) - expected) < 1e-6


def test_nt_xent_prefers_aligned_views():
    g = torch.Generator().manual_seed(1)
    za = torch.randn(8, 16, generator=g)
    aligned = nt_xent(za, za + 0.01 * torch.randn(8, 16, generator=g))
    shuffled = nt_xent(za, za[torch.randperm(8, generator=g)])
    assert aligned < shuffled


def test_prototype_cross_entropy_matches_hand_computation_and_skips_unlabeled():
    from scconcerto.nn.losses import prototype_cross_entropy

    z = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, -1, 1])
    tau = 0.5
    # cell 0: cosines (1, 0) with label 0; cell 2: cosines (1/sqrt2, 1/sqrt2) with label 1; cell 1 unlabeled
    c = 1 / math.sqrt(2)
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0.0)))
    l2 = -math.log(math.exp(c / tau) / (math.exp(c / tau) + math.exp(c / tau)))
    assert abs(float(prototype_cross_entropy(z, prototypes, labels, tau)) - (l0 + l2) / 2) < 1e-6
    none = prototype_cross_entropy(z.requires_grad_(), prototypes.requires_grad_(), torch.full((3,), -1), tau)
    assert float(none.detach()) == 0.0 and none.requires_grad
    none.backward()
    assert prototypes.grad is not None and float(prototypes.grad.abs().sum()) == 0.0
