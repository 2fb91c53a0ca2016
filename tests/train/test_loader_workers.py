"""Mini-batches assembled by DataLoader workers (the GPU default) are the ones the main process builds."""

import numpy as np
import torch

from scconcerto import Concerto
from scconcerto.data import prepare_cells
from scconcerto.train import TrainConfig
from scconcerto.train import plan
from scconcerto.train.plan import loader_workers, training_loader


def test_workers_only_by_default_on_a_gpu(monkeypatch):
    monkeypatch.setattr(plan, "available_cpus", lambda: 16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as the device check sees
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert loader_workers(TrainConfig(device="cpu")) == (0, False)
    assert loader_workers(TrainConfig(device="cuda")) == (4, True)
    assert loader_workers(TrainConfig(device="cuda"), processes=8) == (1, True)
    assert loader_workers(TrainConfig(device="cuda", num_workers=0)) == (0, False)
    assert loader_workers(TrainConfig(device="cpu", num_workers=2)) == (2, False)
    monkeypatch.setattr(plan, "available_cpus", lambda: 1)
    assert loader_workers(TrainConfig(device="cuda")) == (0, False)


def test_worker_batches_equal_main_process_batches(sim):
    model = Concerto(sim, batch_key="batch")
    cells = prepare_cells(sim, model.setup).cells
    batches = {}
    for workers in (0, 2):
        config = TrainConfig(batch_size=64, gene_dropout=0.3, max_genes=50, seed=3, device="cpu", num_workers=workers)
        batches[workers] = list(training_loader(cells, config))
    assert len(batches[0]) == len(batches[2]) > 5
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a.rows, b.rows)
        for view in ("teacher", "student"):
            ra, rb = getattr(a, view)["rna"], getattr(b, view)["rna"]
            assert torch.equal(ra.indices, rb.indices) and torch.equal(ra.values, rb.values)
            assert torch.equal(ra.offsets, rb.offsets)


def test_training_with_workers_gives_the_same_weights(sim):
    weights = []
    for workers in (0, 2):
        model = Concerto(sim, batch_key="batch", label_key="cell_type", seed=1)
        model.train(epochs=2, progress=False, device="cpu", num_workers=workers, prepare_mapping=False)
        weights.append(np.concatenate([p.detach().numpy().ravel() for p in model.network.parameters()]))
    np.testing.assert_array_equal(weights[0], weights[1])
