"""Core speed on the simulator: seconds per training epoch and embedding cells/s (in memory).

    python benchmarks/core_speed.py [--cells 100000] [--genes 2000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from scconcerto import Concerto
from scconcerto.datasets import simulate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    t0 = time.perf_counter()
    adata = simulate(args.cells, args.genes, n_types=8, n_batches=3, seed=0)
    t_sim = time.perf_counter() - t0
    nnz_per_cell = adata.X.nnz / adata.n_obs
    model = Concerto(adata, batch_key="batch", label_key="cell_type")
    t0 = time.perf_counter()
    model.train(epochs=args.epochs, progress=False, prepare_mapping=False)
    t_train = time.perf_counter() - t0  # includes embedding the reference once
    epoch_s = [h["seconds"] for h in model.history]
    t0 = time.perf_counter()
    emb = model.embed(adata)
    t_embed = time.perf_counter() - t0
    print(json.dumps({"cells": args.cells, "genes": args.genes, "expressed_per_cell": round(nnz_per_cell, 1),
                      "simulate_s": round(t_sim, 1), "seconds_per_epoch": [round(s, 1) for s in epoch_s],
                      "train_cells_per_s": round(args.cells / (sum(epoch_s) / len(epoch_s))),
                      "train_total_s": round(t_train, 1), "embed_s": round(t_embed, 1),
                      "embed_cells_per_s": round(emb.shape[0] / t_embed),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main()
