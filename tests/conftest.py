"""Shared fixtures: small seeded simulated datasets and a quickly trained model (built once per session)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sim():
    """600 cells x 300 genes, 4 types, 2 batches (raw counts in CSR X)."""
    from scconcerto.datasets import simulate

    return simulate(600, 300, n_types=4, n_batches=2, seed=0)


@pytest.fixture(scope="session")
def sim_protein():
    """600 cells x 300 genes, 4 types (2 major groups), 2 batches, 6 proteins."""
    from scconcerto.datasets import simulate

    return simulate(600, 300, n_types=4, n_batches=2, n_proteins=6, n_major=2, seed=1)


@pytest.fixture(scope="session")
def trained_model(sim):
    """A Concerto model trained briefly on ``sim`` (shared; do not mutate)."""
    from scconcerto import Concerto

    return Concerto(sim, batch_key="batch", label_key="cell_type").train(epochs=15, progress=False, device="cpu")


@pytest.fixture(scope="session")
def data_dir():
    """The real-data directory from SCCONCERTO_DATA; tests using it skip when absent."""
    path = os.environ.get("SCCONCERTO_DATA")
    if not path or not os.path.isdir(path):
        pytest.skip("real data not available: set SCCONCERTO_DATA to the shared data directory")
    return path
