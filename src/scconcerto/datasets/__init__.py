"""Data sets: a seeded single-cell simulator for tests, docs and benchmarks."""

from ._simulate import simulate, simulate_to_h5ad

__all__ = ["simulate", "simulate_to_h5ad"]
