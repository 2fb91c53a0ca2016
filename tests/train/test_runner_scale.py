"""Runner pieces for atlas scale: forked/seeded generators (CPU and CUDA), rank 0 detection, streamed AdaBN."""

import copy
import tracemalloc

import numpy as np
import pytest
import torch

from scconcerto.data import prepare_cells
from scconcerto.data.backed import read_backed
from scconcerto.datasets import simulate_to_h5ad
from scconcerto.train import embed_cells, iter_embeddings
from scconcerto.train import runner
from scconcerto.train.runner import is_global_zero, rng_devices, seeded_rng


# ------------------------------------------------------------------ random generators
def test_seeded_rng_seeds_the_block_and_restores_the_callers_cpu_state():
    torch.manual_seed(123)
    expected_outside = torch.rand(3)
    torch.manual_seed(5)
    expected_inside = torch.rand(2)

    torch.manual_seed(123)
    with seeded_rng(5, "cpu"):
        inside = torch.rand(2)
    outside = torch.rand(3)
    assert torch.equal(inside, expected_inside)  # the block is seeded as before (CPU results unchanged)
    assert torch.equal(outside, expected_outside)  # the caller's generator continues as if untouched


def test_rng_devices_forks_only_the_cuda_device_this_process_trains_on(monkeypatch):
    assert rng_devices("cpu") == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert rng_devices("cpu") == []
    assert rng_devices("cuda") == [0]
    assert rng_devices("auto") == [0]
    assert rng_devices("cuda:1") == [1]
    monkeypatch.setenv("LOCAL_RANK", "2")  # DDP rank 2 of this node trains on GPU 2
    assert rng_devices("cuda") == [2]
    assert rng_devices("gpu") == [2]
    monkeypatch.setenv("LOCAL_RANK", "7")  # more ranks than GPUs: stay on a device that exists
    assert rng_devices("cuda") == [3]


def test_seeded_rng_forks_the_cuda_generator_when_training_on_a_gpu(monkeypatch):
    forked = []

    class Fork:
        def __init__(self, devices):
            forked.append(list(devices))

        def __enter__(self):
            return None

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(runner, "rng_devices", lambda device: [1] if device == "cuda" else [])
    monkeypatch.setattr(torch.random, "fork_rng", Fork)
    monkeypatch.setattr(torch, "manual_seed", lambda seed: None)
    with seeded_rng(0, "cuda"):
        pass
    with seeded_rng(0, "cpu"):
        pass
    assert forked == [[1], []]


def test_is_global_zero_reads_the_launchers_environment(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's second process on this node
    assert not is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # first process of the second node
    assert not is_global_zero()
    monkeypatch.setenv("RANK", "0")  # torchrun's global rank wins
    assert is_global_zero()
    monkeypatch.setenv("RANK", "3")
    assert not is_global_zero()


# ------------------------------------------------------------------ streamed AdaBN
def test_streamed_adabn_on_a_backed_query_equals_moments_computed_in_memory(sim, trained_model, tmp_path):
    query = sim.copy()
    keep = np.arange(sim.n_obs) % 3 == 0  # these cells keep their (known) source, the others are unseen
    query.obs["batch"] = np.where(keep, sim.obs["batch"].astype(str), "new_source")
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    backed = read_backed(path)
    cells = prepare_cells(backed, trained_model.setup).cells
    new = sorted(set(cells.domains[cells.domains >= len(trained_model.setup.sources)].tolist()))
    assert len(new) == 1
    streamed = embed_cells(trained_model.network, cells, batch_size=37, device="cpu", adapt_domains=new)

    # by hand: every hidden vector of the new source at once, its moments with numpy, set as its statistics
    memory = prepare_cells(query, trained_model.setup).cells
    net = copy.deepcopy(trained_model.network).eval()
    for norm in net.domain_norms():
        norm.add_domains(1)
    rows = np.flatnonzero(memory.domains == new[0])
    with torch.no_grad():
        hidden, _ = net.teacher_hidden(memory.batch(rows).teacher)
        h = hidden.double().numpy()
        net.teacher_tail.norm.running_mean[new[0]] = torch.from_numpy(h.mean(0))
        net.teacher_tail.norm.running_var[new[0]] = torch.from_numpy(h.var(0, ddof=1))
        expected = net.embed(memory.batch(np.arange(sim.n_obs))).numpy()
    np.testing.assert_allclose(streamed, expected, atol=1e-5)
    np.testing.assert_allclose(streamed[keep], trained_model.reference.embedding[keep], atol=1e-5)
    assert float(np.abs(streamed[~keep] - trained_model.reference.embedding[~keep]).max()) > 1e-3  # AdaBN acted


def _adabn_stream_peak(path, model) -> tuple[int, int]:
    backed = read_backed(path)
    backed.obs["batch"] = "unseen_source"
    cells = prepare_cells(backed, model.setup).cells
    new = sorted(set(cells.domains.tolist()))
    tracemalloc.start()
    try:
        n = sum(rows.size for rows, _ in iter_embeddings(model.network, cells, batch_size=256, device="cpu",
                                                         adapt_domains=new))
        return tracemalloc.get_traced_memory()[1], n
    finally:
        tracemalloc.stop()


def test_streamed_adabn_memory_does_not_grow_with_the_query(trained_model, tmp_path):
    genes = len(trained_model.setup.genes)
    small = simulate_to_h5ad(tmp_path / "small.h5ad", 2_000, genes, n_types=4, n_batches=2, seed=0)
    large = simulate_to_h5ad(tmp_path / "large.h5ad", 16_000, genes, n_types=4, n_batches=2, seed=0)
    peak_small, n_small = _adabn_stream_peak(small, trained_model)
    peak_large, n_large = _adabn_stream_peak(large, trained_model)
    assert (n_small, n_large) == (2_000, 16_000)
    hidden_bytes = n_large * trained_model.network.teacher_tail.norm.num_features * 4
    assert peak_large < 1.5 * peak_small  # 8x the cells, about the same peak (a few bytes a cell of row masks)
    assert peak_large < 0.4 * hidden_bytes  # no per-cell hidden vectors are kept (8 MB here; peak ~2.3 MB)
