import numpy as np
import torch

from scconcerto._ragged import CellBatch, Ragged
from scconcerto.nn import ConcertoNetwork, DomainSpecificBatchNorm1d


def test_each_source_keeps_its_own_running_statistics():
    bn = DomainSpecificBatchNorm1d(3, n_domains=2, momentum=1.0)
    bn.train()
    x0 = torch.randn(50, 3) + 5.0
    x1 = torch.randn(50, 3) * 3 - 2.0
    bn(x0, torch.zeros(50, dtype=torch.long))
    torch.testing.assert_close(bn.running_mean[0], x0.mean(0))
    torch.testing.assert_close(bn.running_mean[1], torch.zeros(3))  # untouched
    bn(x1, torch.ones(50, dtype=torch.long))
    torch.testing.assert_close(bn.running_mean[1], x1.mean(0))
    torch.testing.assert_close(bn.running_var[1], x1.var(0, unbiased=True))
    torch.testing.assert_close(bn.running_mean[0], x0.mean(0))


def test_training_normalizes_each_source_by_its_own_batch_statistics():
    bn = DomainSpecificBatchNorm1d(2, n_domains=2)
    bn.train()
    x = torch.cat([torch.randn(40, 2) + 10, torch.randn(40, 2) - 10])
    d = torch.cat([torch.zeros(40), torch.ones(40)]).long()
    y = bn(x, d)
    torch.testing.assert_close(y[:40].mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[40:].mean(0), torch.zeros(2), atol=1e-5, rtol=0)


def test_eval_uses_the_source_running_statistics():
    bn = DomainSpecificBatchNorm1d(2, n_domains=2)
    with torch.no_grad():
        bn.running_mean[1] = torch.tensor([1.0, 2.0])
        bn.running_var[1] = torch.tensor([4.0, 4.0])
    bn.eval()
    y = bn(torch.tensor([[3.0, 2.0]]), torch.tensor([1]))
    torch.testing.assert_close(y, torch.tensor([[1.0, 0.0]]), atol=1e-4, rtol=0)


def _batch(n=20, g=15, domain=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, g, generator=gen) * (torch.rand(n, g, generator=gen) < 0.5) + 0.0
    dense[:, 0] += 1.0
    r = Ragged.from_dense(dense)
    return CellBatch({"rna": r}, {"rna": r}, torch.full((n,), domain, dtype=torch.long), torch.arange(n))


def test_adabn_changes_only_batch_norm_statistics():
    from scconcerto.train import adapt_batch_norm
    from scconcerto.data.cells import CellMatrix
    import numpy as np
    import scipy.sparse as sp

    torch.manual_seed(0)
    net = ConcertoNetwork({"rna": 15}, n_domains=2, dim=8, out_dim=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(0)
    x = sp.random(30, 15, density=0.5, format="csr", random_state=1, dtype=np.float32) * 5
    x.data = np.ceil(x.data)
    cells = CellMatrix(x, None, np.asarray(x.sum(1)).ravel(), "counts", np.full(30, 2, dtype=np.int64))
    adapted = adapt_batch_norm(net, cells, [2], batch_size=16, device="cpu")
    # the original is untouched
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    sd = adapted.state_dict()
    for k, v in before.items():
        if k.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(sd[k][:2], v)  # known sources keep theirs
            assert not torch.allclose(sd[k][2], torch.zeros_like(sd[k][2]) if "mean" in k else torch.ones_like(sd[k][2]))
        elif k.endswith(("norm.weight", "norm.bias")):
            torch.testing.assert_close(sd[k][:2], v)
            torch.testing.assert_close(sd[k][2], v.mean(0))
        else:
            torch.testing.assert_close(sd[k], v)  # every other weight identical
    del rng


def test_adabn_statistics_are_the_exact_moments_of_the_new_source():
    bn = DomainSpecificBatchNorm1d(3, n_domains=1)
    bn.add_domains(1)
    bn.start_adapting([1])
    x = torch.randn(100, 3) * 2 + 1
    for chunk in x.split(30):
        bn(chunk, torch.ones(len(chunk), dtype=torch.long))
    bn.finish_adapting()
    torch.testing.assert_close(bn.running_mean[1], x.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var[1], x.var(0, unbiased=True), atol=1e-4, rtol=1e-4)


def test_weighted_batch_statistics_by_hand():
    """x = 0, 2, 10 with weights 1, 1, 2: mean (0 + 2 + 20) / 4 = 5.5; biased variance
    (30.25 + 12.25 + 2 * 20.25) / 4 = 20.75; the weights' share sum(w^2) / sum(w)^2 = 6 / 16, so the running
    variance is 20.75 / (1 - 0.375) = 33.2. The weights' scale does not matter."""
    x = torch.tensor([[0.0], [2.0], [10.0]])
    for scale in (1.0, 3.0):
        bn = DomainSpecificBatchNorm1d(1, n_domains=2, momentum=1.0, eps=0.0)
        bn.train()
        y = bn(x, torch.ones(3, dtype=torch.long), torch.tensor([1.0, 1.0, 2.0]) * scale)
        torch.testing.assert_close(y, (x - 5.5) / 20.75**0.5)
        torch.testing.assert_close(bn.running_mean[1], torch.tensor([5.5]))
        torch.testing.assert_close(bn.running_var[1], torch.tensor([33.2]))
        torch.testing.assert_close(bn.running_mean[0], torch.zeros(1))  # the other source is untouched


def test_weighted_adabn_sums_equal_the_weighted_moments_of_all_cells():
    """AdaBN accumulated over chunks with weights gives the by-hand weighted moments of the three cells above."""
    bn = DomainSpecificBatchNorm1d(1, n_domains=1)
    bn.add_domains(1)
    bn.start_adapting([1])
    x, w = torch.tensor([[0.0], [2.0], [10.0]]), torch.tensor([1.0, 1.0, 2.0])
    bn(x[:2], torch.ones(2, dtype=torch.long), w[:2])
    bn(x[2:], torch.ones(1, dtype=torch.long), w[2:])
    bn.finish_adapting()
    torch.testing.assert_close(bn.running_mean[1], torch.tensor([5.5]))
    torch.testing.assert_close(bn.running_var[1], torch.tensor([33.2]))


def _two_types(n_a: int, n_b: int, shift: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Hidden vectors of ``n_a`` cells of type A (centre +3) and ``n_b`` of type B (centre -3), plus ``shift``."""
    gen = torch.Generator().manual_seed(seed)
    types = np.array([0] * n_a + [1] * n_b)
    centres = torch.tensor([[3.0, 1.0], [-3.0, 0.0]])
    return centres[types] + 0.3 * torch.randn(len(types), 2, generator=gen) + shift, types


def _adapted_moments(x: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    bn = DomainSpecificBatchNorm1d(2, n_domains=1)
    bn.start_adapting([0])
    bn(x, torch.zeros(len(x), dtype=torch.long), weights)
    bn.finish_adapting()
    return bn.running_mean[0].clone(), bn.running_var[0].clone()


def test_duplicating_one_types_cells_does_not_move_balanced_statistics():
    from scconcerto.data.composition import source_balance_weights

    x, types = _two_types(300, 100, 0.0, seed=0)
    dup = np.concatenate([np.arange(len(types)), np.flatnonzero(types == 1).repeat(2)])  # B three times
    x2, types2 = x[dup], types[dup]
    w1 = torch.from_numpy(source_balance_weights(types, np.zeros(len(types), dtype=np.int64)))
    w2 = torch.from_numpy(source_balance_weights(types2, np.zeros(len(types2), dtype=np.int64)))
    m1, v1 = _adapted_moments(x, w1)
    m2, v2 = _adapted_moments(x2, w2)
    torch.testing.assert_close(m2, m1, atol=1e-5, rtol=0)
    torch.testing.assert_close(v2, v1, rtol=0.01, atol=0)
    plain1, _ = _adapted_moments(x, None)
    plain2, _ = _adapted_moments(x2, None)
    assert (plain2 - plain1).abs().max() > 1.0  # without the weights the source's mean follows its composition


def test_balanced_dsbn_keeps_a_type_where_plain_dsbn_moves_it():
    """Two sources with the same types and a technical shift, 90 % A in one and 10 % A in the other: with
    per-source statistics balanced by type, type A lands at the same place from both sources; with plain
    per-source statistics it is moved by about the spread of the types times the composition gap."""
    from scconcerto.data.composition import source_balance_weights

    xa, ta = _two_types(450, 50, shift=0.0, seed=1)
    xb, tb = _two_types(50, 450, shift=2.0, seed=2)
    x = torch.cat([xa, xb])
    types = np.concatenate([ta, tb])
    domains = torch.cat([torch.zeros(len(ta)), torch.ones(len(tb))]).long()
    weights = torch.from_numpy(source_balance_weights(types, domains.numpy()))
    placed = {}
    for name, w in (("balanced", weights), ("plain", None)):
        bn = DomainSpecificBatchNorm1d(2, n_domains=2, momentum=1.0)
        bn.train()
        for d in (0, 1):
            mine = domains == d
            bn(x[mine], domains[mine], None if w is None else w[mine])
        bn.eval()
        with torch.no_grad():
            y = bn(x, domains)
        a = torch.from_numpy(types == 0)
        placed[name] = (y[a & (domains == 0)].mean(0) - y[a & (domains == 1)].mean(0)).norm().item()
    assert placed["balanced"] < 0.1
    assert placed["plain"] > 1.0
