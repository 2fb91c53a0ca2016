"""The GPU paths on a GPU: skipped without CUDA (CI has none; the H100 figures and how they were taken: docs/scale.md)."""

import numpy as np
import pytest
import torch

from scconcerto import Concerto
from scconcerto.datasets import simulate
from scconcerto.search.neighbors import exact_search

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_exact_search_equals_faiss():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5000, 64)).astype(np.float32)
    query = rng.normal(size=(700, 64)).astype(np.float32)
    s_cpu, i_cpu = exact_search(query, base, 5)
    s_gpu, i_gpu = exact_search(query, base, 5, device="cuda")
    assert (i_gpu == i_cpu).mean() > 0.999  # float32 sums in another order may swap near-ties
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=1e-4, atol=1e-4)


def test_pinned_batches_keep_shared_views():
    adata = simulate(300, 200, n_types=3, n_batches=2, seed=0)
    model = Concerto(adata, batch_key="batch")
    from scconcerto.data import prepare_cells

    batch = prepare_cells(adata, model.setup).cells.batch(np.arange(50))
    pinned = batch.pin_memory()
    assert pinned.teacher["rna"].values.is_pinned()
    assert pinned.teacher["rna"] is pinned.student["rna"]  # one copy of a view both sides share
    moved = pinned.to("cuda")
    assert torch.equal(moved.teacher["rna"].values.cpu(), batch.teacher["rna"].values)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_train_and_map_on_the_gpu_agree_with_the_cpu_mapping(precision):
    world = simulate(3000, 400, n_types=4, n_batches=3, seed=0)
    is_query = (world.obs["batch"] == "batch_2").to_numpy()
    ref, query = world[~is_query].copy(), world[is_query].copy()
    model = Concerto(ref, batch_key="batch", label_key="cell_type")
    model.train(epochs=6, progress=False, device="cuda", precision=precision)  # loader workers, GPU searches
    on_gpu = model.map_query(query.copy(), device="cuda", place=False)
    on_cpu = model.map_query(query.copy(), device="cpu", place=False)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    gpu_pred = on_gpu.predictions["cell_type"]["pred"].astype(str).to_numpy()
    assert np.mean(gpu_pred == truth) > 0.9
    assert np.mean(gpu_pred == on_cpu.predictions["cell_type"]["pred"].astype(str).to_numpy()) > 0.99
    assert on_gpu.info["search_on"] == "gpu"
    np.testing.assert_allclose(on_gpu.embedding, on_cpu.embedding, atol=5e-2 if precision != "32-true" else 1e-3)
