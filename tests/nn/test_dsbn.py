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
