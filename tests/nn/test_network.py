import torch

from scconcerto._ragged import CellBatch, Ragged
from scconcerto.nn import ConcertoNetwork, SparseLinearEncoder


def test_student_sparse_layer_equals_dense_matmul():
    torch.manual_seed(0)
    enc = SparseLinearEncoder(25, 6)
    dense = torch.rand(7, 25) * (torch.rand(7, 25) < 0.3)
    expected = dense @ enc.weight.weight + enc.bias
    torch.testing.assert_close(enc(Ragged.from_dense(dense)), expected, atol=1e-5, rtol=1e-5)


def test_multimodal_hidden_is_the_sum_of_modalities():
    torch.manual_seed(0)
    net = ConcertoNetwork({"rna": 20, "protein": 5}, n_domains=1, dim=8, out_dim=4)
    rna = Ragged.from_dense(torch.rand(4, 20) * (torch.rand(4, 20) < 0.5) + torch.eye(4, 20))
    prot = Ragged.from_dense(torch.rand(4, 5) + 0.1)
    h_both, w = net.teacher_hidden({"rna": rna, "protein": prot})
    h_rna, _ = net.teacher_hidden({"rna": rna})
    h_prot, _ = net.teacher_hidden({"protein": prot})
    torch.testing.assert_close(h_both, h_rna + h_prot)
    assert set(w) == {"rna", "protein"}


def test_embedding_is_unit_norm_and_deterministic_in_eval():
    torch.manual_seed(0)
    net = ConcertoNetwork({"rna": 20}, n_domains=1, dim=8, out_dim=6).eval()
    r = Ragged.from_dense(torch.rand(5, 20) + 0.01)
    b = CellBatch({"rna": r}, {"rna": r}, torch.zeros(5, dtype=torch.long), torch.arange(5))
    with torch.no_grad():
        e1, e2 = net.embed(b), net.embed(b)
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(e1.norm(dim=1), torch.ones(5))
