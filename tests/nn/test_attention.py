import torch

from scconcerto._ragged import Ragged
from scconcerto.nn import AttentionEncoder
from scconcerto.nn.attention import segment_softmax


def _dense_reference(enc: AttentionEncoder, dense: torch.Tensor) -> torch.Tensor:
    """The paper's formula on a dense matrix, one cell at a time, over expressed genes only."""
    out = []
    for row in dense:
        idx = torch.nonzero(row).ravel()
        h = torch.tanh(enc.projection(enc.embedding[idx] * row[idx, None]))  # W(e_i v_i) + b, no rewrite
        a = torch.softmax(h @ enc.context, 0)
        out.append((a[:, None] * h).sum(0))
    return torch.stack(out)


def _cells(seed=0, n=6, g=30):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, g, generator=gen) * (torch.rand(n, g, generator=gen) < 0.4)
    dense[0, :3] = torch.tensor([1.0, 2.0, 3.0])  # no empty rows
    return dense


def test_sparse_path_equals_dense_reference():
    torch.manual_seed(0)
    enc = AttentionEncoder(30, 8)
    dense = _cells()
    hidden, weights = enc(Ragged.from_dense(dense))
    torch.testing.assert_close(hidden, _dense_reference(enc, dense), atol=1e-5, rtol=1e-5)


def test_weights_sum_to_one_per_cell_and_cover_expressed_genes_only():
    torch.manual_seed(0)
    enc = AttentionEncoder(30, 8)
    dense = _cells(1)
    cells = Ragged.from_dense(dense)
    _, w = enc(cells)
    sums = torch.zeros(cells.n_rows).index_add(0, cells.segment_ids(), w)
    torch.testing.assert_close(sums, torch.ones(cells.n_rows))
    assert w.numel() == int((dense != 0).sum())


def test_invariant_to_gene_order_within_a_cell():
    torch.manual_seed(0)
    enc = AttentionEncoder(30, 8)
    cells = Ragged.from_dense(_cells(2))
    perm = torch.cat([torch.randperm(int(n)) + int(o) for o, n in zip(cells.offsets[:-1], cells.lengths)])
    shuffled = Ragged(cells.indices[perm], cells.values[perm], cells.offsets)
    torch.testing.assert_close(enc(cells)[0], enc(shuffled)[0], atol=1e-6, rtol=1e-6)


def test_cell_output_independent_of_batch_companions():
    """The flat layout has no padding: a cell pools the same alone or among longer cells."""
    torch.manual_seed(0)
    enc = AttentionEncoder(30, 8)
    dense = _cells(3)
    together = enc(Ragged.from_dense(dense))[0]
    alone = torch.cat([enc(Ragged.from_dense(dense[i:i + 1]))[0] for i in range(dense.shape[0])])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-6)


def test_segment_softmax_is_stable_for_large_logits():
    logits = torch.tensor([1000.0, 1001.0, -1000.0, 5.0])
    seg = torch.tensor([0, 0, 1, 1])
    p = segment_softmax(logits, seg, 2)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p[:2], torch.softmax(logits[:2], 0))
    torch.testing.assert_close(p[2:], torch.softmax(logits[2:], 0))


def test_gradients_flow_to_embedding_projection_and_context():
    torch.manual_seed(0)
    enc = AttentionEncoder(30, 8)
    hidden, _ = enc(Ragged.from_dense(_cells(4)))
    hidden.sum().backward()
    for p in (enc.embedding, enc.projection.weight, enc.projection.bias, enc.context):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_bf16_inputs_pool_in_float32():
    """Under bf16 (GPU autocast), the softmax and the sum over genes still run in float32."""
    from scconcerto.nn.attention import attention_pool_torch

    torch.manual_seed(0)
    dense = _cells(n=8, g=300) * 3
    cells = Ragged.from_dense(dense)
    P, b, u = torch.randn(300, 16), torch.randn(16), torch.randn(16)
    h32, w32 = attention_pool_torch(P, b, u, cells.indices, cells.values, cells.offsets)
    h16, w16 = attention_pool_torch(P.bfloat16(), b.bfloat16(), u.bfloat16(), cells.indices,
                                    cells.values.bfloat16(), cells.offsets)
    assert w16.dtype == torch.float32 and h16.dtype == torch.float32
    segments = torch.repeat_interleave(torch.arange(len(dense)), cells.offsets[1:] - cells.offsets[:-1])
    sums = torch.zeros(len(dense)).index_add(0, segments, w16)
    torch.testing.assert_close(sums, torch.ones(len(dense)), atol=1e-6, rtol=0)
    torch.testing.assert_close(h16, h32, atol=0.05, rtol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enc = AttentionEncoder(300, 16)
        hidden, weights = enc(cells)
        hidden.float().sum().backward()
    assert torch.isfinite(enc.embedding.grad).all()
