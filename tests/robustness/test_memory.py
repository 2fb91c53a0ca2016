"""Mapping many small queries in a row keeps memory flat."""

import gc
import sys

import numpy as np
import pytest


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_two_hundred_queries_in_a_row_keep_memory_flat(trained_model, sim):
    rng = np.random.default_rng(0)
    queries = []
    for i in range(8):
        q = sim[rng.choice(sim.n_obs, 40, replace=False)].copy()
        q.obs["batch"] = f"query_{i}"  # unseen source: AdaBN on a copy of the network every time
        queries.append(q)

    def run(n):
        for i in range(n):
            q = queries[i % len(queries)].copy()
            trained_model.map_query(q, k=5)
            assert np.isfinite(q.obs["cell_type_confidence"].to_numpy()).all()

    run(20)  # warm-up: caches, allocator pools, lazy imports
    gc.collect()
    start = _rss_mb()
    run(200)
    gc.collect()
    grown = _rss_mb() - start
    print(f"RSS after warm-up {start:.0f} MB, growth over 200 mappings {grown:.1f} MB")
    assert grown < 60, f"memory grew by {grown:.1f} MB over 200 mappings"
