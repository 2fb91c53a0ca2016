"""Exact search on a torch device (the GPU path, run here on the CPU) against faiss."""

import numpy as np
import torch

from scconcerto.model._mapping import MapOptions, map_cells
from scconcerto.search import neighbors
from scconcerto.search.neighbors import exact_search, gpu_search_active, knn, search_device, searches_on_its_device


def _points(n, d=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_torch_search_equals_faiss_in_chunks(monkeypatch):
    base, query = _points(1000), _points(77, seed=1)
    monkeypatch.setattr(neighbors, "GPU_SEARCH_ELEMENTS", 1024 * 10)  # 10 query rows per chunk: 8 chunks
    monkeypatch.setattr(neighbors, "TOPK_BLOCK", 32)  # 1000 cells padded to 32 blocks of 32: the block top-k
    s_faiss, i_faiss = exact_search(query, base, 6)
    s_torch, i_torch = exact_search(query, base, 6, device="cpu")
    np.testing.assert_array_equal(i_torch, i_faiss)
    np.testing.assert_allclose(s_torch, s_faiss, atol=1e-6)
    assert i_torch.dtype == np.int64 and s_torch.dtype == np.float32


def test_rescored_search_equals_faiss(monkeypatch):
    """The atlas path (TF32 products on CUDA) rescores its neighbours in float32: here, on the CPU, exactly faiss."""
    base, query = _points(2000), _points(50, seed=3)
    monkeypatch.setattr(neighbors, "GPU_TF32_MIN_PAIRS", 0)
    s_faiss, i_faiss = exact_search(query, base, 5)
    s_torch, i_torch = exact_search(query, base, 5, device="cpu")
    np.testing.assert_array_equal(i_torch, i_faiss)
    np.testing.assert_allclose(s_torch, s_faiss, atol=1e-6)


def test_torch_search_pads_like_faiss_when_k_exceeds_the_base():
    base, query = _points(3), _points(4, seed=2)
    s_faiss, i_faiss = exact_search(query, base, 5)
    s_torch, i_torch = exact_search(query, base, 5, device="cpu")
    np.testing.assert_array_equal(i_torch, i_faiss)
    assert (i_torch[:, 3:] == -1).all()
    np.testing.assert_allclose(s_torch[:, :3], s_faiss[:, :3], atol=1e-6)


def test_search_device_scopes_and_knn_excludes_self_on_it(monkeypatch):
    assert not gpu_search_active()
    with search_device("cpu"):
        assert not gpu_search_active()  # a CPU keeps faiss
    x = _points(200)
    expected = knn(x, x, k=4, exclude_self=True)
    monkeypatch.setattr(neighbors, "_search_on", torch.device("cpu"))  # the GPU path, on the CPU
    assert gpu_search_active()
    got = knn(x, x, k=4, exclude_self=True, kind="ivf")  # an array on the device: exact whatever the kind
    np.testing.assert_array_equal(got.indices, expected.indices)
    assert not (got.indices == np.arange(200)[:, None]).any()


def test_decorator_reads_the_device_argument(monkeypatch):
    seen = []

    @searches_on_its_device
    def work(x, device="auto"):
        seen.append(neighbors._search_on)
        return x

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    work(1, device="cuda:0")
    work(1)  # "auto" with CUDA available
    work(1, device="cpu")
    assert seen == [torch.device("cuda:0"), torch.device("cuda"), None]
    assert neighbors._search_on is None


def test_mapping_with_the_torch_search_equals_faiss(trained_model, sim, monkeypatch):
    query = sim[sim.obs["batch"] == "batch_1"].copy()
    query.obs["batch"] = "unseen"  # AdaBN with the label-shift rounds, which search too
    expected = trained_model.map_query(query.copy(), device="cpu", impute=False, place=False)
    monkeypatch.setattr(neighbors, "_search_on", torch.device("cpu"))
    mapper = trained_model.mapper  # map without `map`'s search device, which `device` would set
    options = MapOptions(device="cpu", impute=False, place=False, seed=trained_model.seed)
    got = map_cells(trained_model, mapper.state, mapper._search(), query.copy(), options)
    np.testing.assert_array_equal(got.neighbors.indices, expected.neighbors.indices)
    for key, frame in expected.predictions.items():
        assert (got.predictions[key]["pred"] == frame["pred"]).all()
        np.testing.assert_allclose(got.predictions[key]["confidence"], frame["confidence"], atol=1e-4)  # float32 sums
    assert got.info["search_on"] == "gpu" and expected.info["search_on"] == "cpu"
    assert expected.info["adabn"]["balanced"]


def test_block_topk_equals_a_full_topk():
    from scconcerto.search.neighbors import _topk_by_blocks

    gen = torch.Generator().manual_seed(0)
    for n_cols in (5120, 4096, 300):  # block top-k twice, and a matrix too narrow for it
        scores = torch.randn(40, n_cols, generator=gen)
        scores[3, 100:110] = 7.0 + torch.arange(10) * 1e-3  # the best entries crowded into one block
        values, columns = _topk_by_blocks(scores, 6, block=64)
        expected = torch.topk(scores, 6, dim=1)
        torch.testing.assert_close(values, expected.values)
        assert torch.equal(columns, expected.indices)
