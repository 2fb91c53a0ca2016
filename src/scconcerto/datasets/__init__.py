"""Data sets: a seeded single-cell simulator for tests, docs and benchmarks."""

from ._simulate import HARD_SIMULATION, simulate, simulate_hard, simulate_to_h5ad, write_hard_simulation

__all__ = ["HARD_SIMULATION", "simulate", "simulate_hard", "simulate_to_h5ad", "write_hard_simulation"]
