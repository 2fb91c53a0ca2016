"""The fused CPU attention kernels against the plain-torch reference: values, gradients, invariances."""

import numpy as np
import pytest
import torch

from scconcerto._ragged import Ragged
from scconcerto.nn import AttentionEncoder
from scconcerto.nn import fused_attention
from scconcerto.nn.attention import (attention_backend, attention_pool, attention_pool_torch, get_attention_backend,
                                     set_attention_backend)

pytestmark = pytest.mark.skipif(not fused_attention.is_available(), reason="numba not installed")


def _batch(seed=0, n=40, genes=200, d=32, density=0.3, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, genes, generator=gen) * 3 * (torch.rand(n, genes, generator=gen) < density)
    dense[5] = 0  # a cell with no expressed gene
    cells = Ragged.from_dense(dense)
    P = (torch.randn(genes, d, generator=gen) * scale).requires_grad_()
    b = torch.randn(d, generator=gen).requires_grad_()
    u = (torch.randn(d, generator=gen) * scale).requires_grad_()
    return P, b, u, cells


def _outputs_and_grads(fn, P, b, u, cells, seed=1):
    values = cells.values.clone().requires_grad_()
    hidden, weights = fn(P, b, u, cells.indices, values, cells.offsets)
    gen = torch.Generator().manual_seed(seed)
    g_hidden = torch.randn(hidden.shape, generator=gen)
    g_weights = torch.randn(weights.shape, generator=gen)
    loss = (hidden * g_hidden).sum() + (weights * g_weights).sum()
    grads = torch.autograd.grad(loss, [P, b, u, values])
    return (hidden, weights, *grads)


def test_fused_forward_and_gradients_equal_the_torch_reference():
    P, b, u, cells = _batch()
    ref = _outputs_and_grads(attention_pool_torch, P, b, u, cells)
    fused = _outputs_and_grads(fused_attention.fused_attention_pool, P, b, u, cells)
    for name, r, f in zip(["hidden", "weights", "dP", "db", "du", "dvalues"], ref, fused):
        # float32 sums in another order: rounding grows with the tensor's scale (du reaches 16 here, and differs
        # by 1.1e-5 on some CPUs), so the absolute tolerance is relative to it
        scale = max(1.0, float(r.detach().abs().max()))
        torch.testing.assert_close(f, r, atol=1e-5 * scale, rtol=1e-5, msg=name)
    hidden = fused[0]
    assert torch.all(hidden[5] == 0)  # the empty cell pools to zeros


def test_fused_handles_large_logits_and_saturated_tanh():
    P, b, u, cells = _batch(seed=3, scale=30.0)  # logits in the hundreds, tanh saturated
    ref = _outputs_and_grads(attention_pool_torch, P, b, u, cells)
    fused = _outputs_and_grads(fused_attention.fused_attention_pool, P, b, u, cells)
    for r, f in zip(ref, fused):
        assert torch.isfinite(f).all()
    # near-one-hot softmax over saturated tanh: compare at the precision the problem allows
    torch.testing.assert_close(fused[0], ref[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fused[1], ref[1], atol=1e-3, rtol=1e-2)
    for r, f in zip(ref[2:], fused[2:]):
        assert float((f - r).norm() / r.norm().clamp_min(1e-12)) < 1e-2


def test_fused_is_invariant_to_gene_order_within_a_cell():
    P, b, u, cells = _batch(seed=2)
    perm = torch.cat([torch.randperm(int(n), generator=torch.Generator().manual_seed(i)) + int(o)
                      for i, (o, n) in enumerate(zip(cells.offsets[:-1], cells.lengths))])
    shuffled = Ragged(cells.indices[perm], cells.values[perm], cells.offsets)
    h1, w1 = fused_attention.fused_attention_pool(P, b, u, cells.indices, cells.values, cells.offsets)
    h2, w2 = fused_attention.fused_attention_pool(P, b, u, shuffled.indices, shuffled.values, shuffled.offsets)
    torch.testing.assert_close(h1, h2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w1[perm], w2, atol=1e-7, rtol=1e-6)
    g1 = torch.autograd.grad(h1.sum(), P)[0]
    g2 = torch.autograd.grad(h2.sum(), P)[0]
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)


def test_fused_result_does_not_depend_on_the_thread_count():
    P, b, u, cells = _batch(seed=4, n=300, genes=100, density=0.6)  # enough values for several chunks
    outs = []
    try:
        for threads in (1, 3):
            fused_attention.set_num_threads(threads)
            outs.append(_outputs_and_grads(fused_attention.fused_attention_pool, P, b, u, cells))
    finally:
        fused_attention.set_num_threads(None)
    for a, c in zip(*outs):  # only the summation order of the per-thread gradient buffers differs
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


def test_auto_backend_uses_fused_for_cpu_float32_and_torch_for_float64(monkeypatch):
    calls = []
    real = fused_attention.fused_attention_pool
    monkeypatch.setattr(fused_attention, "fused_attention_pool", lambda *a: calls.append(1) or real(*a))
    enc = AttentionEncoder(50, 8)
    cells = Ragged.from_dense(torch.rand(4, 50) * (torch.rand(4, 50) < 0.5))
    assert get_attention_backend() == "auto"
    enc(cells)
    assert calls == [1]
    with attention_backend("torch"):
        enc(cells)
    assert calls == [1]
    enc64 = AttentionEncoder(12, 4).double()
    dense64 = torch.rand(3, 12, dtype=torch.float64) * (torch.rand(3, 12) < 0.6)
    dense64[0, 0] = 1.0
    cells64 = Ragged.from_dense(dense64)
    cells64 = Ragged(cells64.indices, cells64.values.double(), cells64.offsets)
    enc64(cells64)  # float64 goes the torch way (gradcheck relies on it)
    assert calls == [1]
    assert torch.autograd.gradcheck(
        lambda p: attention_pool(p, enc64.projection.bias, enc64.context, cells64)[0],
        (enc64.projected_table().detach().clone().requires_grad_(),), atol=1e-6)


def test_backend_switch_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend("fast")  # type: ignore[arg-type]
    assert get_attention_backend() == "auto"


def test_encoder_training_step_matches_between_backends():
    """A full encoder forward/backward (projection table included) gives the same parameter gradients."""
    torch.manual_seed(0)
    enc = AttentionEncoder(120, 16)
    gen = torch.Generator().manual_seed(5)
    dense = torch.rand(30, 120, generator=gen) * (torch.rand(30, 120, generator=gen) < 0.3)
    cells = Ragged.from_dense(dense)
    grads = {}
    for name in ("torch", "fused"):
        enc.zero_grad()
        with attention_backend(name):
            (enc(cells)[0] ** 2).sum().backward()
        grads[name] = [p.grad.clone() for p in enc.parameters()]
    for a, c in zip(grads["torch"], grads["fused"]):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    assert np.isfinite(sum(float(g.abs().sum()) for g in grads["fused"]))
