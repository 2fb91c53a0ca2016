"""Data-parallel training (Lightning DDP, gloo on CPU) matches one process that sees the same batches."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from scconcerto import Concerto
from scconcerto.data import prepare_cells, source_batches
from scconcerto.data.positives import joint_components, neighbor_positives
from scconcerto.data.scaled_space import fit_scaled_space
from scconcerto.datasets import simulate
from scconcerto.train import TrainConfig, fit

SCRIPT = textwrap.dedent('''
    import sys
    from safetensors.torch import save_file
    from scconcerto import Concerto
    from scconcerto.datasets import simulate
    from scconcerto.train import is_global_zero

    out, batch_size = sys.argv[1], int(sys.argv[2])
    adata = simulate(512, 120, n_types=3, n_batches=2, seed=5)
    model = Concerto(adata, batch_key="batch", seed=3)
    # default neighbour positives (no labels): every rank computes the same ones
    # plain per-source statistics, as the one-process replica below (balanced ones re-cluster mid-training)
    model.train(epochs=2, batch_size=batch_size, device="cpu", progress=False, devices=2, strategy="ddp",
                balance="none")
    import torch.distributed as dist
    assert not dist.is_initialized()  # fit closed the group it opened
    print(f"RANK {0 if is_global_zero() else 1} REFERENCE {model.reference is not None}", flush=True)
    if is_global_zero():
        save_file({k: v.contiguous() for k, v in model.network.state_dict().items()}, out)
''')


def _even_batch_size(domains):
    """A batch size giving an even number of batches, so both ranks see distinct batches (no padding)."""
    return next(bs for bs in range(48, 16, -1) if len(source_batches(domains, bs, False)) % 2 == 0)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_cpu_processes_match_one_process_accumulating_their_batches(tmp_path):
    from safetensors.torch import load_file

    adata = simulate(512, 120, n_types=3, n_batches=2, seed=5)
    model = Concerto(adata, batch_key="batch", seed=3)
    cells = prepare_cells(adata, model.setup).cells
    # what Concerto.train attaches (no label keys): neighbours of every source in the centred and scaled expression
    # spaces
    joint = joint_components(fit_scaled_space(cells, seed=3, scale=False).project(cells),
                             fit_scaled_space(cells, seed=3).project(cells))
    cells.positives = neighbor_positives(cells, 10, seed=3, components=joint, across_sources=True)
    batch_size = _even_batch_size(cells.domains)

    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, str(script), str(out), str(batch_size)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in run.stdout + run.stderr  # two processes really ran
    assert "RANK 0 REFERENCE True" in run.stdout and "RANK 1 REFERENCE False" in run.stdout  # rank 0 alone embeds
    ddp = load_file(str(out))

    # one process, same global batches, gradients of rank-0 and rank-1 batches summed before each step
    initial = {k: v.clone() for k, v in model.network.state_dict().items()}
    config = TrainConfig(epochs=2, batch_size=batch_size, device="cpu", progress=False, gene_dropout=0.2,
                         max_genes=512, positive_neighbors=10, seed=3)
    fit(model.network, cells, config, accumulate_grad_batches=2)
    single = model.network.state_dict()
    for name, value in single.items():
        assert float((value - initial[name]).abs().max()) > 1e-4, name  # every tensor was trained
        torch.testing.assert_close(ddp[name], value, atol=1e-5, rtol=1e-4, msg=name)

    # hence the same embedding (running statistics of the domain-specific BN included)
    model.train_config = config
    emb_single = model.embed(adata, device="cpu")
    model.network.load_state_dict(ddp)
    emb_ddp = model.embed(adata, device="cpu")
    assert float(np.min(np.sum(emb_single * emb_ddp, axis=1))) > 0.9999
